"""Feature-network weights: fetched once from their location, checked against the pinned sha256,
converted to safetensors, cached; offline, one line naming the file and where to put it."""
import hashlib
import http.server
import threading
from dataclasses import replace
from functools import partial

import pytest
import torch

from ground.errors import PlannerError
from planner.quality import weights as w


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    monkeypatch.delenv("PLANNER_OFFLINE", raising=False)   # the suite runs offline; these tests serve locally


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL and a request counter."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, hits
    httpd.shutdown()


def _published(root, name="net.pth"):
    state = {"conv.weight": torch.arange(12.0).reshape(3, 4), "bn.bias": torch.ones(3)}
    path = root / name
    torch.save(state, path, pickle_protocol=2)
    return state, hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_checks_the_hash_converts_and_caches(server, monkeypatch):
    from safetensors.torch import load_file

    base, root, hits = server
    state, digest = _published(root)
    spec = w.WeightsFile(name="net.safetensors", url=f"{base}/net.pth", sha256=digest, what="a test network")
    path = w.fetch(spec)
    assert path.suffix == ".safetensors" and all(torch.equal(load_file(str(path))[k], v) for k, v in state.items())
    assert w.fetch(spec) == path and len(hits) == 1               # cached: fetched once
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".download")]


def test_a_file_with_another_hash_is_refused(server):
    base, root, _ = server
    _, digest = _published(root)
    spec = w.WeightsFile(name="bad.safetensors", url=f"{base}/net.pth", sha256="0" * 64, what="a test network")
    with pytest.raises(PlannerError, match="is not the pinned 0000") as err:
        w.fetch(spec)
    assert "\n" not in str(err.value) and not (w.cache_dir("weights") / "bad.safetensors").exists()


def test_offline_or_unreachable_says_where_to_put_the_file(monkeypatch):
    spec = replace(w.INCEPTION, url="http://127.0.0.1:9/none.pth")
    monkeypatch.setenv("PLANNER_OFFLINE", "1")
    with pytest.raises(PlannerError, match="PLANNER_OFFLINE is set: download .*place a safetensors copy at"):
        w.fetch(spec)
    monkeypatch.delenv("PLANNER_OFFLINE")
    with pytest.raises(PlannerError, match="cannot download http://127.0.0.1:9/none.pth"):
        w.fetch(spec)


def test_a_pickle_that_is_not_plain_tensors_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"x": object()}))
    with pytest.raises(PlannerError, match="not a plain state dict"):
        w.convert(path, tmp_path / "out.safetensors")
