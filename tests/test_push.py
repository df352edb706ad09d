"""`eagle push`: validation catches broken folders; the upload runs huggingface_hub's real code with only the HTTP
transport replaced (a fake Hub answering in-process), and what it sends is exactly the folder's files."""

import base64
import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

from eagle_hub.cli import main
from eagle_hub.hub_cards.model_card import write_model_card
from eagle_hub.hub_cards.push import PushError, load_check, push_folder, static_problems, upload_file_list

try:  # huggingface_hub 2.x speaks httpx2, 1.x httpx
    import httpx2 as httpx
except ImportError:
    import httpx

REPO_ID = "eagle-org/eagle-x5-tiny"


class FakeHub:
    """The Hub's HTTP API, as much of it as ``create_repo``, ``create_branch`` and ``upload_folder`` use.
    ``fail`` maps a path fragment to an HTTP status to answer with (e.g. ``{"/commit/": 403}``)."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.branches: list[str] = []
        self.commits: list[dict] = []
        self.fail: dict[str, int] = {}

    def __call__(self, request) -> "httpx.Response":
        path = unquote(request.url.path)
        if path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry: not part of the upload
            return httpx.Response(404, json={"error": "not here"})
        self.requests.append((request.method, path))
        assert request.headers.get("authorization") == "Bearer hf_test_token"
        for fragment, status in self.fail.items():
            if fragment in path:
                message = f"You don't have the rights to create a model under the namespace {REPO_ID.split('/')[0]}"
                return httpx.Response(status, json={"error": message}, headers={"X-Error-Message": message})
        endpoint = constants.ENDPOINT
        if path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            return httpx.Response(200, json={"url": f"{endpoint}/{body['organization']}/{body['name']}", "id": "1"})
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if path.startswith(f"/api/models/{REPO_ID}/branch/"):
            self.branches.append(path.rsplit("/branch/", 1)[1])
            return httpx.Response(200, json={})
        if path.startswith(f"/api/models/{REPO_ID}/preupload/"):
            files = json.loads(request.content)["files"]
            return httpx.Response(
                200,
                json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        if path == f"/api/models/{REPO_ID}/discussions" and request.method == "POST":
            return httpx.Response(200, json={"num": 1})
        if path == f"/api/models/{REPO_ID}/discussions/1":
            return httpx.Response(200, json=self._pull_request())
        if path.startswith(f"/api/models/{REPO_ID}/commit/"):
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line]
            header = next(line["value"] for line in lines if line["key"] == "header")
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            revision = path.split("/commit/", 1)[1]
            self.commits.append({"revision": revision, "summary": header["summary"], "files": files})
            return httpx.Response(
                200,
                json={"commitUrl": f"{endpoint}/{REPO_ID}/commit/{'a' * 40}", "commitOid": "a" * 40},
            )
        return httpx.Response(500, json={"error": f"the fake Hub does not know {request.method} {path}"})

    def _pull_request(self) -> dict:
        return {
            "title": "Upload",
            "num": 1,
            "author": {"name": "tester"},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "status": "draft",
            "repo": {"name": REPO_ID, "type": "model"},
            "isPullRequest": True,
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "events": [],
            "diff": "",
        }

    @property
    def sent(self) -> dict[str, bytes]:
        files = {}
        for commit in self.commits:
            files.update(commit["files"])
        return files


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Only the transport is fake: huggingface_hub builds and sends every request through its own code."""
    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 for everything else
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    huggingface_hub.set_client_factory(
        lambda: httpx.Client(
            transport=httpx.MockTransport(fake),
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
        )
    )
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)


@pytest.fixture
def folder(saved_folder, tmp_path):
    return Path(shutil.copytree(saved_folder, tmp_path / "eagle-x5-tiny"))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_validates_in_a_fresh_process_then_sends_the_folders_files(folder, hub, capsys):
    assert not (folder / "README.md").exists()
    code = main(["push", str(folder), "--repo-id", REPO_ID, "--private"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "fresh process, trust_remote_code: EagleForConditionalGeneration" in out.out
    assert "wrote the model card" in out.out and f"{constants.ENDPOINT}/{REPO_ID}/commit/" in out.out
    # A card was generated, then exactly the folder's files went out, byte for byte, in one commit to main.
    assert (folder / "README.md").is_file()
    assert hub.sent == folder_bytes(folder)
    assert [c["revision"] for c in hub.commits] == ["main"]
    (created,) = hub.created
    assert (created["organization"], created["name"]) == ("eagle-org", "eagle-x5-tiny")
    assert created.get("visibility") == "private" or created.get("private") is True
    assert ("POST", "/api/validate-yaml") in hub.requests  # the Hub checks the card's YAML before the upload


def test_push_to_a_branch_and_as_a_pull_request(folder, hub):
    write_model_card(folder, repo_id=REPO_ID)
    result = push_folder(folder, REPO_ID, revision="dev", load=False, commit_message="tiny eagle")
    assert hub.branches == ["dev"] and hub.commits[-1]["revision"] == "dev"
    assert hub.commits[-1]["summary"] == "tiny eagle"
    assert sorted(name for name, _ in result.files) == sorted(folder_bytes(folder))
    result = push_folder(folder, REPO_ID, create_pr=True, load=False)
    assert hub.commits[-1]["revision"] == "refs/pr/1"
    assert result.pr_url and result.pr_url.endswith("/discussions/1")
    assert hub.sent == folder_bytes(folder)
    with pytest.raises(PushError, match="cannot be combined with --revision"):
        push_folder(folder, REPO_ID, create_pr=True, revision="dev", load=False)


def test_dry_run_lists_the_files_and_sends_nothing(folder, hub, capsys):
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    code = main(["push", str(folder), "--repo-id", REPO_ID, "--dry-run", "--skip-load-check"])
    out = capsys.readouterr().out
    assert code == 0
    assert hub.requests == [] and not (folder / "README.md").exists()
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    expected = sorted([*(name for name in folder_bytes(folder) if "__pycache__" not in name), "README.md"])
    assert sorted(listed) == expected
    assert "README.md" in out and "(generated from the folder)" in out
    assert upload_file_list(folder) == sorted(n for n in folder_bytes(folder) if "__pycache__" not in n)


def test_missing_token_is_a_clear_error(folder, hub, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    code = main(["push", str(folder), "--repo-id", REPO_ID])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "hf auth login" in err and "HF_TOKEN" in err
    assert hub.requests == []
    assert main(["push", str(folder), "--repo-id", REPO_ID, "--dry-run", "--skip-load-check"]) == 0
    assert "no Hugging Face token found" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fragment, status, words", [("/commit/", 403, "403 Forbidden"), ("/repos/create", 401, "401")]
)
def test_rejected_upload_is_a_clear_error(folder, hub, capsys, fragment, status, words):
    write_model_card(folder, repo_id=REPO_ID)
    hub.fail[fragment] = status
    code = main(["push", str(folder), "--repo-id", REPO_ID, "--skip-load-check"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert words in err and REPO_ID.split("/")[0] in err
    assert hub.commits == []


def _break(folder: Path, how: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    if how == "missing expert code":
        (folder / "expert_eva02.py").unlink()
    elif how == "auto_map":
        del config["auto_map"]["AutoModelForImageTextToText"]
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "model_type":
        config["model_type"] = "llava"
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "tokenizer":
        (folder / "tokenizer.json").unlink()
    elif how == "chat template":
        (folder / "chat_template.jinja").unlink()
    elif how == "weights":
        (folder / "model.safetensors").unlink()
    elif how == "card":
        write_model_card(folder)
        text = (folder / "README.md").read_text().replace("pipeline_tag: image-text-to-text", "pipeline_tag: text-gen")
        (folder / "README.md").write_text(text.replace("- custom_code\n", ""))


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing expert code", "expert_eva02.py is not in the folder (needed by modeling_eagle.py)"),
        ("auto_map", "auto_map lacks AutoModelForImageTextToText"),
        ("model_type", "model_type is 'llava'"),
        ("tokenizer", "no tokenizer"),
        ("chat template", "no chat template"),
        ("weights", "no weights"),
        ("card", "pipeline_tag is 'text-gen'"),
    ],
)
def test_validation_catches_broken_folders(folder, hub, capsys, how, message):
    _break(folder, how)
    assert any(message in problem for problem in static_problems(folder)), static_problems(folder)
    code = main(["push", str(folder), "--repo-id", REPO_ID])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert hub.requests == []
    if how == "card":
        assert "tags lack 'custom_code'" in err


def test_fresh_process_catches_code_that_needs_this_package(folder):
    """Static checks pass, but the remote code imports this package, which Hub users do not have."""
    code = folder / "configuration_eagle.py"
    code.write_text("import hub_cards  # noqa\n" + code.read_text())
    assert static_problems(folder) == []
    with pytest.raises(PushError, match=r"does not load with trust_remote_code \(config: ImportError: .*hub_cards"):
        load_check(folder)
