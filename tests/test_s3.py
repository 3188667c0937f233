"""S3 (any S3-compatible store) for data, base models and publishing, against moto on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hone_trainer import contract
from hone_trainer.manifest import MANIFEST, PublishError, write_manifest
from hone_trainer.training.publish import publish
from hone_trainer.storage import open_binary

from hone_dev.s3 import BUCKET


def staging_folder(tmp_path: Path, n: int = 4) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(n):
        (staging / f"part-{i}.safetensors").write_bytes(bytes([i]) * 1000)
    write_manifest(staging, {"kind": "HoneModel", "fineTunedModel": "ft:x:n::1"})
    return staging


def test_publish_to_s3_uploads_files_then_the_manifest(s3, tmp_path: Path) -> None:
    creds, fs = s3
    uri = publish(staging_folder(tmp_path), f"s3://{BUCKET}/team-a/job/model", creds)
    assert uri == f"s3://{BUCKET}/team-a/job/model"
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/team-a/job/model"))
    assert names == [MANIFEST, "part-0.safetensors", "part-1.safetensors", "part-2.safetensors",
                     "part-3.safetensors"]
    manifest = json.loads(fs.cat(f"{BUCKET}/team-a/job/model/{MANIFEST}"))
    assert set(manifest["files"]) == {f"part-{i}.safetensors" for i in range(4)}


def test_an_upload_that_fails_halfway_leaves_no_manifest(s3, tmp_path: Path, monkeypatch) -> None:
    creds, fs = s3
    target = f"s3://{BUCKET}/team-a/job/model"
    publish(staging_folder(tmp_path), target, creds)  # an earlier, complete publish
    retry = tmp_path / "retry"
    retry.mkdir()
    staging = staging_folder(retry)
    real_put = fs.put_file  # fsspec caches filesystems: publish() gets this same instance
    calls = {"n": 0}

    def flaky(lpath, rpath, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("connection reset by peer")
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(fs, "put_file", flaky)
    with pytest.raises(PublishError, match="connection reset"):
        publish(staging, target, creds)
    # Readers trust only a manifest: there is none now, so nothing half-written counts as published.
    assert calls["n"] == 3
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/team-a/job/model/{MANIFEST}")


def test_training_data_and_validation_read_from_s3(s3, tmp_path: Path) -> None:
    from hone_dev.tiny import make_tokenizer
    from hone_trainer.training.validate import validate

    creds, fs = s3
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                      {"role": "assistant", "content": f"a{i}"}]}) for i in range(12)]
    fs.pipe(f"{BUCKET}/data/train.jsonl", ("\n".join(lines) + "\n").encode())
    with open_binary(f"s3://{BUCKET}/data/train.jsonl", creds) as fp:
        assert fp.read().count(b"\n") == 12
    config = contract.TrainerConfig(
        job=contract.JobIdentity(namespace="n", name="j", uid="u", fine_tuned_model="ft:x:n::u"),
        base_model=contract.ModelSource(location="/unused"),
        training_data=contract.DataFile(location=f"s3://{BUCKET}/data/train.jsonl", credentials_dir=creds),
        output_uri="/o", checkpoint_dir="/c")
    result = validate(config, make_tokenizer(tmp_path / "tok"))
    assert result.ok and result.examples == 12
    missing = config.model_copy(update={"training_data": contract.DataFile(
        location=f"s3://{BUCKET}/data/nope.jsonl", credentials_dir=creds)})
    result = validate(missing, make_tokenizer(tmp_path / "tok2"))
    assert not result.ok and result.problem_counts == {"unreadable_file": 1}


def test_base_model_from_s3_fetches_only_safe_files(s3, tmp_path: Path, monkeypatch) -> None:
    from hone_trainer import models

    creds, fs = s3
    for name, data in {"config.json": b"{}", "model.safetensors": b"w", "tokenizer.json": b"{}",
                       "pytorch_model.bin": b"pickle!"}.items():
        fs.pipe(f"{BUCKET}/base/{name}", data)
    monkeypatch.setenv("HONE_CACHE", str(tmp_path / "cache"))
    local = models.resolve(contract.ModelSource(location=f"s3://{BUCKET}/base", credentials_dir=creds))
    assert sorted(p.name for p in local.path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_an_adapter_published_to_s3_is_served_from_there_with_every_file_its_manifest_lists(s3, tmp_path: Path) -> None:
    """peft writes a README.md beside the weights, and a published folder may hold subfolders: serving from S3
    fetches exactly what the manifest lists and verifies it, as it does for a folder on a claim."""
    from hone_trainer.serving.loading import ServingError, local_artifact

    creds, fs = s3
    staging = tmp_path / "adapter"
    (staging / "logs").mkdir(parents=True)
    (staging / "adapter_model.safetensors").write_bytes(b"\x01" * 64)
    (staging / "adapter_config.json").write_text("{}")
    (staging / "README.md").write_text("---\nlibrary_name: peft\n---\n")
    (staging / "logs" / "losses.csv").write_text("step,loss\n1,2.0\n")
    (staging / "merged").mkdir()
    (staging / "merged" / "model.safetensors").write_bytes(b"\x02" * 128)
    write_manifest(staging, {"kind": "HoneModel", "fineTunedModel": "ft:x:n::1"})
    uri = publish(staging, f"s3://{BUCKET}/team-a/job/model", creds)
    art = local_artifact(uri, creds)
    assert art.is_adapter and (art.path / "README.md").exists() and (art.path / "logs" / "losses.csv").exists()
    assert not (art.path / "merged").exists()  # the merged full model is not what serving an adapter reads

    # A manifest that names a path outside its folder is refused before anything is written there.
    manifest = json.loads(fs.cat(f"{BUCKET}/team-a/job/model/{MANIFEST}"))
    manifest["files"]["../escaped.safetensors"] = {"sha256": "0" * 64, "bytes": 1}
    fs.pipe_file(f"{BUCKET}/team-a/job/model/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(ServingError, match="not inside the folder"):
        local_artifact(uri, creds)
    assert not (art.path.parent / "escaped.safetensors").exists()
    # And one that lists a file the store lacks is not served.
    manifest["files"].pop("../escaped.safetensors")
    manifest["files"]["adapter_model.safetensors"]["bytes"] += 1
    fs.pipe_file(f"{BUCKET}/team-a/job/model/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(ServingError, match="does not match its manifest"):
        local_artifact(uri, creds)
