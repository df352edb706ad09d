"""``eagle push``: validate a model folder, then upload it to the Hugging Face Hub."""

from pathlib import Path

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "push",
        help="validate a model folder, then upload it to the Hugging Face Hub",
        description="Check that a folder is Hub-ready (config with auto_map and its code files, processor, "
        "tokenizer, chat template, safetensors weights, model card metadata), load it in a fresh process with "
        "trust_remote_code and run one forward pass, then create the repo if needed and upload the folder. "
        "A folder without README.md gets a generated model card. Needs a token: `hf auth login` or HF_TOKEN.",
    )
    parser.add_argument("folder", help="the model folder (from `eagle init`, `eagle convert` or `eagle train`)")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--revision", help="branch to upload to (created if missing; default main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--commit-message", help="the commit message (default names the folder)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and list what would be uploaded; send nothing"
    )
    parser.add_argument(
        "--skip-load-check",
        action="store_true",
        help="skip the fresh-process load and forward pass (for models too large for this machine)",
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    from eagle_hub.hub_cards.push import PushError, push_folder

    try:
        result = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
            load=not args.skip_load_check,
            commit_message=args.commit_message,
        )
    except PushError as error:
        raise UserError(str(error)) from error
    for check in result.checks:
        print(f"ok: {check}")
    target = "a pull request on main" if args.create_pr else f"branch {args.revision or 'main'}"
    if result.dry_run:
        print(
            f"dry run: would upload {len(result.files)} files ({result.total_bytes:,} bytes) "
            f"to {args.repo_id}, {target}:"
        )
        for name, size in result.files:
            note = " (generated from the folder)" if name == "README.md" and result.card_generated else ""
            print(f"  {name}  {size:,} bytes{note}")
        if not result.token_found:
            print("note: no Hugging Face token found; before pushing, run `hf auth login` or set HF_TOKEN")
        return
    if result.card_generated:
        print(f"wrote the model card {Path(args.folder) / 'README.md'}")
    print(f"uploaded {len(result.files)} files ({result.total_bytes:,} bytes) to {args.repo_id}, {target}")
    print(result.pr_url or result.commit_url or f"https://huggingface.co/{args.repo_id}")
