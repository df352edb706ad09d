"""The README's Python examples run as written (in a scratch folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "eagle-x5-tiny" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert printed.count("generated_text") == 3  # two batched chat answers and one raw answer
