"""Where data, model and output live inside the pods: volumes and mounts, collected while resolving a spec.

Both builders resolve locations through :class:`Storage`, so a FineTuneJob's
trainer and the ModelServing that serves its adapters see the same paths
(``pvc://<claim>/<path>`` is mounted at ``PVC_ROOT/<claim>`` in every pod).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from hone_operator.api.v1alpha1 import BaseModelSpec, DataSource, SecretRef, parse_pvc_uri, uri_scheme
from hone_operator.builders.common import SpecError
from hone_trainer import contract

PVC_ROOT = "/var/run/hone/pvc"
SECRETS_ROOT = "/var/run/secrets/hone"
DATA_ROOT = "/var/run/hone/data"

#: Schemes that only make sense on the machine `hone run` runs on. (``embedded://``
#: works in a cluster too: the runtime image ships the embedded model.)
LOCAL_ONLY_SCHEMES = ("file",)


@dataclass
class Storage:
    """Volumes and mounts collected while resolving the spec's locations."""

    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    mounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    inline: dict[str, str] = field(default_factory=dict)

    def pvc(self, claim: str, writable: bool) -> str:
        vol = f"pvc-{_short(claim)}"
        path = f"{PVC_ROOT}/{claim}"
        self.volumes[vol] = {"name": vol, "persistentVolumeClaim": {"claimName": claim}}
        prev = self.mounts.get(vol)
        read_only = not writable and (prev is None or prev["readOnly"])
        self.mounts[vol] = {"name": vol, "mountPath": path, "readOnly": read_only}
        return path

    def pvc_path(self, uri: str, writable: bool = False) -> str:
        """``pvc://<claim>/<path>`` as the pod sees it, with the claim mounted."""
        claim, path = parse_pvc_uri(uri)
        return join_path(self.pvc(claim, writable), path)

    def secret(self, ref: SecretRef | None) -> str | None:
        if ref is None:
            return None
        vol = f"secret-{_short(ref.name)}"
        path = f"{SECRETS_ROOT}/{ref.name}"
        self.volumes[vol] = {"name": vol, "secret": {"secretName": ref.name, "defaultMode": 0o440}}
        self.mounts[vol] = {"name": vol, "mountPath": path, "readOnly": True}
        return path

    def config_map_key(self, which: str, name: str, key: str) -> str:
        vol = f"data-{which}"
        self.volumes[vol] = {
            "name": vol,
            "configMap": {"name": name, "items": [{"key": key, "path": f"{which}.jsonl"}]},
        }
        self.mounts[vol] = {"name": vol, "mountPath": f"{DATA_ROOT}/{which}", "readOnly": True}
        return f"{DATA_ROOT}/{which}/{which}.jsonl"


def _short(name: str) -> str:
    if len(name) <= 40:
        return name
    return f"{name[:31]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def in_cluster(uri: str, param: str) -> None:
    if uri_scheme(uri) in LOCAL_ONLY_SCHEMES:
        raise SpecError(
            param,
            f"{param} {uri!r} only works with `hone run` on one machine; in a cluster use "
            "pvc://<claim>/<path>, s3:// or (for models) a Hugging Face id",
        )


def uploaded_file_uri(store: str, namespace: str, file_id: str) -> str:
    """Where ``hone api`` keeps the bytes of an uploaded file (``store``: its settings' api_store)."""
    return f"{store.rstrip('/')}/files/{namespace}/{file_id}.jsonl"


def uploaded(src: DataSource, store: str | None, secret: str, namespace: str, param: str) -> DataSource:
    """A data source that names a file uploaded to ``hone api`` (``file: file-…``) as the URI it lies at in the
    API's store, read with the namespace's Secret ``secret``; any other source as it is."""
    if src.file is None:
        return src
    if not store:
        raise SpecError(f"{param}.file", f"{param}.file names a file uploaded to hone api, but this operator has no "
                                         "api_store (the chart's api.store): give the data as uri, configMap or "
                                         "inline instead")
    return DataSource.model_validate({"uri": uploaded_file_uri(store, namespace, src.file),
                                      "credentialsSecret": {"name": secret}})


def data_location(src: DataSource, which: str, storage: Storage, param: str) -> contract.DataFile:
    if src.inline is not None:
        key = f"{which}.jsonl"
        storage.inline[key] = src.inline
        return contract.DataFile(location=f"{contract.CONFIG_MOUNT_PATH}/{key}")
    if src.configMap is not None:
        return contract.DataFile(
            location=storage.config_map_key(which, src.configMap.name, src.configMap.key)
        )
    assert src.uri is not None
    in_cluster(src.uri, f"{param}.uri")
    if uri_scheme(src.uri) == "pvc":
        claim, path = parse_pvc_uri(src.uri)
        if not path:
            raise SpecError(f"{param}.uri", f"{param}.uri {src.uri!r} names no file: write pvc://{claim}/<path>.jsonl")
        return contract.DataFile(location=storage.pvc_path(src.uri))
    return contract.DataFile(location=src.uri, credentials_dir=storage.secret(src.credentialsSecret))


def join_path(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


def base_model_source(base: BaseModelSpec, storage: Storage, param: str) -> contract.ModelSource:
    """A base model as its pods see it: the trainer's, and the server's for the adapters it trained
    (the same location, so the adapters' manifests name the base the server loads)."""
    uri = base.uri
    in_cluster(uri, param)
    if uri_scheme(uri) == "pvc":
        location = storage.pvc_path(uri)
    elif uri_scheme(uri) == "hf" and "://" in uri:
        location = uri.split("://", 1)[1]
    else:
        location = uri
    return contract.ModelSource(location=location, revision=base.revision, trust_remote_code=base.trustRemoteCode,
                                credentials_dir=storage.secret(base.credentialsSecret))
