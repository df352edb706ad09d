"""What every command shares: the user-error type and the rule for paths given on the command line."""

from pathlib import Path


class UserError(Exception):
    """An error the user can fix; shown as one line, exit status 2."""


def existing_folder(value: str, option: str, what: str = "a model folder") -> Path:
    """A folder named on the command line (relative to the working directory), which must hold a config.json."""
    folder = Path(value).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{option} {value}: no config.json there; pass {what} written by `eagle init`, "
            "`eagle convert`, `eagle train` or `save_pretrained`"
        )
    return folder
