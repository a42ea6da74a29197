"""A local stand-in for huggingface_hub.HfApi: repos are folders, uploads copy files (tests never reach the Hub)."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path


class FakeHub:
    """Creating a repo names it; ``upload_folder`` copies what ``allow_patterns``/``ignore_patterns`` keep (as
    the Hub does) into ``root/<repo_id>``; ``upload_file`` copies one file. ``uploads`` lists the repos (and
    ``repo/file``) in upload order."""

    def __init__(self, root: Path):
        self.root, self.uploads = Path(root), []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, allow_patterns=None, ignore_patterns=(), **kwargs):
        folder = Path(folder_path)
        for path in folder.rglob("*"):
            name = path.relative_to(folder).as_posix()
            if path.is_dir() or any(fnmatch.fnmatch(name, p) for p in ignore_patterns or ()):
                continue
            if allow_patterns is not None and not any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                continue
            target = self.root / repo_id / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        self.uploads.append(repo_id)
        return "commit"

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        target = self.root / repo_id / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(path_or_fileobj).read_bytes())
        self.uploads.append(f"{repo_id}/{path_in_repo}")
        return "commit"
