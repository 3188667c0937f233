"""A published folder is trusted only as its manifest describes it: every file listed, hashed and
plain, nothing outside the folder, nothing more in it; anything else is refused with the file's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hone_trainer.manifest import MANIFEST, PublishError, sha256_file, verify, write_manifest
from hone_dev.serving import env


def published(folder: Path) -> Path:
    (folder / "merged").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (folder / "merged" / "model.safetensors").write_bytes(b"merged weights")
    write_manifest(folder, {"fineTunedModel": "ft:x:local::1", "baseModel": {"location": "/base"}})
    return folder


def rewrite(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_complete_folder_verifies(tmp_path: Path) -> None:
    assert verify(published(tmp_path / "m"))["fineTunedModel"] == "ft:x:local::1"


def test_an_unlisted_file_is_refused(tmp_path: Path) -> None:
    """An adapter_model.safetensors the manifest does not list was loaded unverified."""
    folder = published(tmp_path / "m")
    rewrite(folder, lambda m: m["files"].pop("adapter_model.safetensors"))
    with pytest.raises(PublishError, match="adapter_model.safetensors is not in its manifest"):
        verify(folder)
    folder = published(tmp_path / "n")
    (folder / "extra.py").write_text("import os")
    with pytest.raises(PublishError, match="extra.py is not in its manifest"):
        verify(folder)


def test_changed_or_missing_files_are_refused(tmp_path: Path) -> None:
    folder = published(tmp_path / "m")
    (folder / "adapter_model.safetensors").write_bytes(b"other" * 140)  # same size, other bytes
    with pytest.raises(PublishError, match="adapter_model.safetensors does not match its manifest"):
        verify(folder)
    folder = published(tmp_path / "n")
    (folder / "merged" / "model.safetensors").unlink()
    with pytest.raises(PublishError, match="merged/model.safetensors does not match"):
        verify(folder)
    assert verify(folder, without=("merged",))  # a copy that leaves merged/ out on purpose


@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/passwd", "a/../../x", "./adapter_config.json", "a\\b",
                                   "", MANIFEST])
def test_entries_that_leave_the_folder_are_refused(tmp_path: Path, entry: str) -> None:
    folder = published(tmp_path / "m")
    (tmp_path / "outside.bin").write_bytes(b"secret")
    meta = {"sha256": sha256_file(tmp_path / "outside.bin"), "bytes": 6}
    rewrite(folder, lambda m: m["files"].__setitem__(entry, meta))
    with pytest.raises(PublishError, match="is not a plain path inside the folder"):
        verify(folder)


def test_symbolic_links_are_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("token")
    folder = published(tmp_path / "m")
    os.symlink(tmp_path / "secret", folder / "tokenizer.json")
    write_manifest(folder, {})  # even when listed: the hash would be the target's
    with pytest.raises(PublishError, match="tokenizer.json is a symbolic link"):
        verify(folder)
    folder = published(tmp_path / "n")
    os.symlink(tmp_path, folder / "more")
    with pytest.raises(PublishError, match="more is a symbolic link"):
        verify(folder)


@pytest.mark.parametrize("text", ["not json", "[]", '{"files": []}', '{"files": {"a": {"sha256": 1}}}',
                                  '{"files": {"a": {"sha256": "' + "0" * 64 + '", "bytes": true}}}', "[" * 5000])
def test_a_malformed_manifest_is_refused_by_name(tmp_path: Path, text: str) -> None:
    folder = published(tmp_path / "m")
    (folder / MANIFEST).write_text(text)
    with pytest.raises(PublishError, match=MANIFEST):
        verify(folder)


def test_fetch_refuses_a_malformed_manifest_with_exit_code_5(tmp_path: Path) -> None:
    """The init step of a vLLM pod: a malformed manifest was a traceback (exit 1, retried as a crash), and
    copied what it found, links included; it now copies only what the verified manifest lists."""
    folder = published(tmp_path / "m")
    (folder / MANIFEST).write_text("[]")
    run = subprocess.run([sys.executable, "-m", "hone_trainer", "fetch", "--model", "/base", "--adapter", str(folder),
                          "--target", str(tmp_path / "out")], env=env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 5, run.stderr
    assert "Traceback" not in run.stderr and 'no "files" object' in run.stderr


def test_fetch_copies_the_listed_files_without_merged(tmp_path: Path) -> None:
    """The copy for a runtime that reads only the adapter: merged/ (a mergeWeights job's full model) is left
    out, and the copy verifies; before, leaving it out failed the copy's own verification."""
    from hone_trainer.serving.loading import fetch_to, local_artifact

    art = local_artifact(str(published(tmp_path / "m")))
    copy = fetch_to(art, tmp_path / "out")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "adapter_config.json", "adapter_model.safetensors", MANIFEST]
