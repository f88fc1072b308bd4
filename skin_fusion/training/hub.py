"""Pushing a saved model directory (weights, processor, code, card, plots) to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi


class HubPushError(RuntimeError):
    """The push failed; the local save is complete and the message says how to push it later."""


def push_model_directory(output_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or reuse) the model repository `repo_id` and upload `output_dir` without checkpoints; returns its URL."""
    output_dir = Path(output_dir)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=output_dir, commit_message="Upload SkinFusion model",
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.lock"],
        )
    except Exception as error:  # network, auth and offline errors all leave the local save as the result
        raise HubPushError(
            f"Could not push {output_dir} to the Hub repository '{repo_id}': {error}. The model is saved locally in "
            f"{output_dir}; push it later with `hf upload {repo_id} {output_dir}` once you are online and logged in "
            "(`hf auth login`)."
        ) from error
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
