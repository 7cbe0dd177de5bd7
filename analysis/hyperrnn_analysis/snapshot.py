"""A hyperrnn snapshot (docs/snapshot-format.md), opened through its manifest and verified here,
in Python, before anything is read: the format version, the manifest's root attributes against
attrs_sha256, every shard file's presence and whole-file SHA-256 against the manifest's record,
each shard's step, run and index attributes, and every dataset that is read against its own
sha256 attribute. (Through a virtual dataset, HDF5 reads a missing shard as fill values without
an error: only these checks catch it.)

    s = open_snapshot("RUN/snapshots/step_00001000")      # or its manifest.h5, or RUN (latest)
    s.step, s.config, s.shards, s.param_order
    s.params()                 # every model tensor, name -> float32 array (experts included)
    s.experts("params")        # {(layer, family): array (E, ...)}, e.g. (0, "fc1.weight")
    s.adam("m"), s.adam("v")   # the AdamW moments, name -> array
    s.gating()                 # pilf: the GatingTransformer's tensors
    s.theta_sha256()           # equals `hyperrnn inspect`'s theta_sha256
Leaves out: writing snapshots; the buffers and replay sets (read them with s.dataset(name)).
"""
import hashlib
import os
import re

import h5py
import numpy as np

from .errors import AnalysisError

FORMAT = "hyperrnn-snapshot-v1"
STEP_DIR = re.compile(r"^step_\d{8}$")
EXPERT = re.compile(r"^layers\.(\d+)\.moe\.experts\.(\d+)\.(.+)$")
LAYER = re.compile(r"^layers\.(\d+)\.")


def sha256_file(path, block=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                return h.hexdigest()
            h.update(b)


def _attr(f, name, path):
    if name not in f.attrs:
        raise AnalysisError(f"{path}: no attribute '{name}' (not a hyperrnn snapshot, or a damaged one)")
    v = f.attrs[name]
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.shape == (1,):
        v = v[0]
    return v.decode() if isinstance(v, bytes) else v


def _le_bytes(a):
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def list_snapshots(run_dir):
    """A run's complete snapshot directories (exactly step_ + 8 digits, with a manifest), oldest
    first; a snapshot being written (.tmp) or passed over (.superseded) is not one."""
    d = os.path.join(run_dir, "snapshots")
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, n) for n in sorted(os.listdir(d))
            if STEP_DIR.match(n) and os.path.exists(os.path.join(d, n, "manifest.h5"))]


def layer_of(name):
    m = LAYER.match(name)
    return int(m.group(1)) if m else None


def expert_of(name):
    """(layer, expert, family) of an expert tensor's name, else None."""
    m = EXPERT.match(name)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


class Snapshot:
    def __init__(self, directory, verify=True):
        self.dir = directory
        self.manifest = os.path.join(directory, "manifest.h5")
        try:
            self._f = h5py.File(self.manifest, "r")
        except OSError as e:
            raise AnalysisError(f"{self.manifest}: cannot be opened as HDF5 ({e.__class__.__name__}: truncated or not a snapshot)")
        f, m = self._f, self.manifest
        self.format = str(_attr(f, "format", m))
        if self.format != FORMAT:
            raise AnalysisError(f"{m}: unknown snapshot format '{self.format}' (this toolkit reads {FORMAT})")
        self.step = int(_attr(f, "step", m))
        self.config_text = str(_attr(f, "config", m))
        self.run_id = str(_attr(f, "run_id", m))
        self.code_version = str(_attr(f, "code_version", m))
        self.shards = int(_attr(f, "shard_files", m))
        self.shard_sha256 = [h for h in str(_attr(f, "shard_sha256", m)).split("\n") if h]
        self.param_order = str(_attr(f, "param_order", m)).split()
        self.gating_order = str(_attr(f, "gating_order", m)).split() if "gating_order" in f.attrs else []
        from .runs import parse_ini
        self.config = parse_ini(self.config_text)
        if verify:
            self.verify()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def shard_path(self, r):
        return os.path.join(self.dir, f"shard-{r:05d}-of-{self.shards:05d}.h5")

    def verify(self):
        """Raises AnalysisError naming the first file (and dataset) that fails."""
        m = self.manifest
        joined = "".join(h + "\n" for h in self.shard_sha256)
        text = "\n".join([self.format, str(self.step), self.config_text, self.run_id, self.code_version, str(self.shards),
                          joined])
        if hashlib.sha256(text.encode()).hexdigest() != str(_attr(self._f, "attrs_sha256", m)):
            raise AnalysisError(f"{m}: root attributes do not match their recorded sha256 (a damaged manifest)")
        if hashlib.sha256(self.config_text.encode()).hexdigest() != self.run_id:
            raise AnalysisError(f"{m}: run_id does not match the recorded configuration")
        if len(self.shard_sha256) != self.shards:
            raise AnalysisError(f"{m}: {len(self.shard_sha256)} shard hashes for {self.shards} shard files")
        for r in range(self.shards):
            p = self.shard_path(r)
            if not os.path.exists(p):
                raise AnalysisError(f"{p}: missing (shard {r} of {self.shards}; its experts would read as fill values)")
            got = sha256_file(p)
            if got != self.shard_sha256[r]:
                raise AnalysisError(f"{p}: file sha256 {got} does not match the manifest's {self.shard_sha256[r]} (a damaged shard)")
            try:
                with h5py.File(p, "r") as s:
                    ok = (int(_attr(s, "step", p)) == self.step and str(_attr(s, "run_id", p)) == self.run_id
                          and int(_attr(s, "shard", p)) == r and int(_attr(s, "shards", p)) == self.shards)
            except OSError as e:
                raise AnalysisError(f"{p}: cannot be opened as HDF5 ({e.__class__.__name__})")
            if not ok:
                raise AnalysisError(f"{p}: its step, run or shard attributes do not match the manifest")

    def dataset(self, name, check=True):
        """One dataset of the manifest (virtual ones read through the shards), checked against its
        sha256 attribute."""
        if name not in self._f:
            raise AnalysisError(f"{self.manifest}: no dataset '{name}'")
        ds = self._f[name]
        a = ds[()]
        if check:
            want = ds.attrs.get("sha256")
            if want is not None:
                want = want.decode() if isinstance(want, bytes) else str(want)
                if hashlib.sha256(_le_bytes(a)).hexdigest() != want:
                    raise AnalysisError(f"{self.manifest}: dataset /{name} does not match its sha256 (damaged data)")
        return a

    def params(self):
        return {n: self.dataset("params/" + n) for n in self.param_order}

    def gating(self):
        return {n: self.dataset("gating/" + n) for n in self.gating_order}

    def adam(self, moment):
        if moment not in ("m", "v"):
            raise ValueError("moment must be 'm' or 'v'")
        return {n: self.dataset(f"adam/{moment}/" + n) for n in self.param_order}

    def experts(self, group="params"):
        """{(layer, family): (E, ...) array} from the stacked views experts/<group>/..."""
        out = {}
        root = f"experts/{group}"
        if root not in self._f:
            return out
        for fam in self._f[root]:
            m = re.match(r"^layers\.(\d+)\.moe\.experts\.(.+)$", fam)
            if m:
                out[(int(m.group(1)), m.group(2))] = self.dataset(f"{root}/{fam}", check=False)
        return out

    def structure(self):
        """Per model tensor: (name, layer or None, expert or None, shape)."""
        rows = []
        for n in self.param_order:
            e = expert_of(n)
            rows.append((n, layer_of(n), e[1] if e else None, tuple(self._f["params/" + n].shape)))
        return rows

    def theta_sha256(self):
        h = hashlib.sha256()
        for n in self.param_order:
            h.update(np.ascontiguousarray(self.dataset("params/" + n), "<f4").tobytes())
        for n in self.gating_order:
            h.update(np.ascontiguousarray(self.dataset("gating/" + n), "<f4").tobytes())
        return h.hexdigest()


def open_snapshot(path, verify=True):
    """A snapshot directory, its manifest.h5, or a run directory (its `latest` snapshot)."""
    p = path
    if os.path.basename(p) == "manifest.h5":
        p = os.path.dirname(p)
    if os.path.isdir(os.path.join(p, "snapshots")):
        latest = os.path.join(p, "snapshots", "latest")
        if not os.path.exists(latest):
            raise AnalysisError(f"{path}: a run directory without a complete snapshot (no snapshots/latest)")
        with open(latest) as f:
            p = os.path.join(p, "snapshots", f.read().strip())
    if not os.path.isdir(p) or not os.path.exists(os.path.join(p, "manifest.h5")):
        raise AnalysisError(f"{path}: not a snapshot (no manifest.h5)")
    return Snapshot(p, verify=verify)
