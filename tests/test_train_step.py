"""The sharded train step (`yolox_jax.train.step`): official SGD fixture and mesh invariance.

* Two steps of `make_train_step` on one device from the fixture weights land on the official
  parameters and BN statistics of `loss/nano_sgd2.npz` (local subset: see tests/test_optim.py).
* The same global batch gives the same state on 1 device, 4 devices of one process, and 2
  processes x 2 devices (`jax.distributed` on localhost, each feeding its half of the batch
  through `make_array_from_process_local_data`), up to the float32 noise floor measured by
  running the 1-device step on the batch with its rows reversed.
  These run in subprocesses (device counts are fixed at JAX start-up) that execute this file as
  a script; they start with the first test so that their compiles overlap it.
  For compile time they use the nano widths/depths without depthwise convs (the CPU depthwise
  taps compile ~3x slower and are elementwise, so sharding-neutral) at 96x96, with weights from
  the fixtures' gen-weight rule (numpy: no compiled init).
* `bn_sync="device"` (per-device BN, the official DDP): one step on 4 devices equals the mean
  of the 4 single-row steps on one device (the first SGD step is linear in the gradient).
* A bfloat16-compute step stays finite and close to float32, parameters float32.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TEST_FILE = Path(__file__).resolve()
SMALL_SIZE = (96, 96)
STEPS = 2


# ---- helpers shared by the tests and the worker processes -----------------------------------


def small_config(dtype: str = "float32"):
    from yolox_jax.config import variant_config

    cfg = variant_config("yolox_nano")
    cfg.model.depthwise = False
    cfg.model.dtype = dtype
    cfg.train.warmup_epochs = 0  # steps 0, 1 at the full lr (the warm-up starts at lr 0)
    return cfg


def small_batch() -> tuple[np.ndarray, np.ndarray]:
    """images [4, 96, 96, 3] uint8, labels [4, 8, 5] (class, cx, cy, w, h); image 0 has no box."""
    images = np.random.default_rng(5).integers(0, 256, size=(4, *SMALL_SIZE, 3)).astype(np.uint8)
    labels = np.zeros((4, 8, 5), np.float32)
    labels[1, :2] = [[3, 30, 40, 24, 30], [7, 70, 60, 20, 40]]
    labels[2, :3] = [[0, 48, 48, 90, 90], [12, 20, 75, 16, 12], [5, 80, 20, 30, 25]]
    labels[3, :1] = [[41, 60, 30, 40, 20]]
    return images, labels


def flat_state(state, metrics_per_step) -> dict[str, np.ndarray]:
    """Host copies of a (possibly multi-process, replicated) state and the step metrics."""
    import jax

    def host(x):
        return np.asarray(x.addressable_data(0))

    out = {}
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    if state.ema is not None:
        tree["ema"] = {"params": state.ema.params, "batch_stats": state.ema.batch_stats}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(p.key for p in path)] = host(leaf)
    for i, metrics in enumerate(metrics_per_step):
        for k, v in metrics.items():
            out[f"metrics{i}/{k}"] = host(v)
    out["step"] = host(state.step)
    return out


class SmallRun:
    """The small model's train step compiled once for a mesh over `devices` (global)."""

    def __init__(self, devices, dtype: str = "float32", bn_sync: str = "global"):
        from fixture_weights import gen_tensor

        from yolox_jax.models.yolox import build_model
        from yolox_jax.train.optim import make_optimizer
        from yolox_jax.train.step import make_mesh, make_train_step
        from yolox_jax.weights.convert import expected_torch_shapes, from_torch_state_dict

        cfg = small_config(dtype)
        self.model = model = build_model(cfg)
        # The fixtures' gen-weight rule (numpy; `init_variables` would compile the init, ~25 s)
        shapes = expected_torch_shapes(cfg)
        self.variables = from_torch_state_dict({k: gen_tensor(k, s) for k, s in shapes.items()},
                                               cfg)
        self.tx, schedule = make_optimizer(cfg.train, 4, 10)
        self.mesh = make_mesh(devices)
        self.step = make_train_step(model, self.tx, schedule, self.mesh, bn_sync=bn_sync)

    def __call__(self, order=(0, 1, 2, 3), process_rows: slice | None = None,
                 steps: int = STEPS) -> dict[str, np.ndarray]:
        """`steps` steps from the same initial state on the global batch with its rows in
        `order`, this process feeding `process_rows` of it (all rows in a single process)."""
        import jax

        from yolox_jax.train.state import create_train_state
        from yolox_jax.train.step import global_batch, replicated

        state = create_train_state(self.variables, self.tx, 0)
        state = jax.device_put(state, replicated(self.mesh))
        images, labels = small_batch()
        order, rows = list(order), process_rows or slice(None)
        images, labels = global_batch(self.mesh, images[order][rows], labels[order][rows])
        metrics = []
        for _ in range(steps):
            state, m = self.step(state, images, labels, use_l1=True)
            metrics.append(m)
        return flat_state(state, metrics)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (the fixtures README's measure)."""
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


# ---- the worker processes ----------------------------------------------------------------


def _exit_with_parent() -> None:
    """A worker whose pytest died (killed, timed out) exits instead of computing on."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _worker(argv: list[str]) -> None:
    _exit_with_parent()
    mode, out = argv[0], argv[1]
    import jax

    if mode == "devices":
        devs = jax.devices()
        assert len(devs) == 4, devs
        single = SmallRun(devs[:1])
        runs = {"one": single(), "one_reversed": single(order=(3, 2, 1, 0)),
                "four": SmallRun(devs)(),
                # bn_sync="device": one step on 4 devices vs each row alone on one device
                "device": SmallRun(devs, bn_sync="device")(steps=1)}
        runs.update({f"row{i}": single(process_rows=slice(i, i + 1), steps=1) for i in range(4)})
        np.savez(out, **{f"{run}/{k}": v for run, r in runs.items() for k, v in r.items()})
    elif mode == "process":
        pid, port = int(argv[2]), int(argv[3])
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=pid, initialization_timeout=120)
        assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
        assert len(jax.local_devices()) == 2
        result = SmallRun(jax.devices())(process_rows=slice(2 * pid, 2 * pid + 2))
        np.savez(out, **result)
        jax.distributed.shutdown()
    else:
        raise SystemExit(f"unknown worker mode {mode!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """The worker subprocesses, started at once; `result(name)` waits for one."""

    TIMEOUT_S = 900  # generous: the CPUs may be shared

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
        port = _free_port()
        self._start("devices", 4, ["devices"])
        for pid in (0, 1):
            self._start(f"process{pid}", 2, ["process", str(pid), str(port)])
        self.started = time.time()

    def _start(self, name: str, n_devices: int, args: list[str]) -> None:
        out, log = self.tmp / f"{name}.npz", self.tmp / f"{name}.log"
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
        cmd = [sys.executable, str(TEST_FILE), args[0], str(out), *args[1:]]
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    cwd=TEST_FILE.parents[1])
        self.procs[name] = (proc, out, log)

    @functools.cache  # noqa: B019 - one Workers object per module
    def result(self, name: str) -> dict[str, np.ndarray]:
        proc, out, log = self.procs[name]
        try:
            proc.wait(timeout=max(self.TIMEOUT_S - (time.time() - self.started), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode != 0 or not out.exists():
            tail = log.read_text()[-3000:]
            raise AssertionError(f"worker {name} failed (exit {proc.returncode}):\n{tail}")
        with np.load(out) as f:
            return {k: f[k] for k in f.files}

    def close(self) -> None:
        for proc, _, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    w = Workers(tmp_path_factory.mktemp("train_step_workers"))
    yield w
    w.close()


# ---- official 2-step SGD fixture --------------------------------------------------------------


def _sgd2_reference() -> tuple[dict[str, np.ndarray], bool]:
    from conftest import FIXTURES, SHARED_FIXTURES

    shared = SHARED_FIXTURES / "loss" / "nano_sgd2.npz"
    if shared.exists():
        with np.load(shared) as f:
            return {k: f[k] for k in f.files}, True
    with np.load(FIXTURES / "loss_nano_sgd2_grads.npz") as f:
        return {k[5:]: f[k] for k in f.files if k.startswith("sgd2/")}, False


def test_two_steps_match_official_sgd_fixture(workers):
    """`loss/nano_sgd2.npz`: official get_optimizer groups, lr 0.01 / 64 * 4 fixed, BN in train
    mode, same batch twice. Here: warm-up 0 and min_lr_ratio 1 make the schedule that constant
    lr. (`workers` only starts the subprocesses of the later tests early.)"""
    import jax
    import jax.numpy as jnp
    from conftest import FIXTURES
    from fixture_weights import fixture_state_dict

    from yolox_jax.config import variant_config
    from yolox_jax.models.yolox import build_model
    from yolox_jax.train.optim import ema_decay_at, make_optimizer
    from yolox_jax.train.state import create_train_state
    from yolox_jax.train.step import global_batch, make_mesh, make_train_step, replicated
    from yolox_jax.weights.convert import from_torch_state_dict, to_torch_state_dict

    cfg = variant_config("yolox_nano")
    cfg.train.warmup_epochs = 0
    cfg.train.min_lr_ratio = 1.0
    model = build_model(cfg)
    sd0 = fixture_state_dict("yolox_nano")
    tx, schedule = make_optimizer(cfg.train, 4, 100)
    assert float(schedule(0)) == pytest.approx(0.000625, rel=1e-7)
    mesh = make_mesh(jax.devices()[:1])
    state = create_train_state(from_torch_state_dict(sd0, cfg), tx, 0, use_ema=True)
    state = jax.device_put(state, replicated(mesh))
    step = make_train_step(model, tx, schedule, mesh)
    with np.load(FIXTURES / "loss_nano_bntrain.npz") as f:
        labels = f["labels"]
    images = np.random.default_rng(1).integers(0, 256, size=(4, 3, 160, 224)).astype(np.uint8)
    images, labels = global_batch(mesh, images.transpose(0, 2, 3, 1), labels)

    ref, full = _sgd2_reference()
    history = [jax.device_get(state)]
    for i in (1, 2):
        state, m = step(state, images, labels, use_l1=False)
        m = jax.device_get(m)
        history.append(jax.device_get(state))
        assert float(m["total"]) == pytest.approx(float(ref[f"__step{i}_total_loss"]), rel=1e-4)
        for ours, theirs in (("iou", "iou_loss"), ("obj", "conf_loss"), ("cls", "cls_loss")):
            assert float(m[ours]) == pytest.approx(float(ref[f"__step{i}_{theirs}"]), rel=1e-3)
        assert float(m["num_fg"]) / float(m["num_gts"]) == pytest.approx(
            float(ref[f"__step{i}_num_fg"]), abs=1e-6)
        assert float(m["lr"]) == pytest.approx(0.000625, rel=1e-6)
    assert step.jitted._cache_size() == 1  # the donated output state does not recompile
    assert int(state.step) == 2

    ours = to_torch_state_dict({"params": state.params, "batch_stats": state.batch_stats})
    keys = [k for k in ref if not k.startswith("__") and not k.endswith("num_batches_tracked")]
    assert len(keys) == (538 if full else len(keys)) and len(keys) > 400
    # Our two steps compound our step-1 float32 gradient noise (~2e-4, tests/test_optim.py):
    # the step-2 forward then sits near a SimOTA decision boundary of this batch, and the
    # float rounding of the fused BN backward flips one positive anchor there (num_fg stays 37,
    # asserted above). Measured: max 7.0e-3 with the fused BN, 6.7e-4 with autodiff BN (whose
    # rounding happens to keep the official assignment). The exactness of each step is checked
    # tightly below, from the official step-1 gradients.
    errs = sorted((rel_err(ours[k], ref[k]), k) for k in keys)
    assert errs[-1][0] < 2e-2, errs[-3:]

    if full:
        _second_step_from_official_first(step, tx, sd0, ref, images, labels, history, mesh)
    # EMA after two updates: ema = d2 * (d1 * p0 + (1 - d1) * p1) + (1 - d2) * p2.
    d1, d2 = (float(ema_decay_at(u, 0.9998)) for u in (1, 2))
    for name in ("params", "batch_stats"):
        p0, p1, p2 = (getattr(h, name) for h in history)
        want = jax.tree.map(lambda a, b, c: d2 * (d1 * a + (1 - d1) * b) + (1 - d2) * c, p0, p1, p2)
        got = getattr(state.ema, name)
        err = max(jax.tree.leaves(jax.tree.map(lambda a, b: rel_err(np.asarray(a), b), got, want)))
        assert err < 1e-5, (name, err)
    assert int(state.ema.updates) == 2
    assert jnp.issubdtype(state.ema.updates.dtype, jnp.integer)


def _second_step_from_official_first(step, tx, sd0, ref, images, labels, history, mesh):
    """Step 1 applied with the *official* gradients (`loss/nano_grads.npz`, same batch), then our
    step 2: both steps are checked without compounding float noise. Measured: step 1 of our run
    vs the official-gradient step 1, update error median 8.9e-5 (max 2.4e-3, a BN weight);
    step 2 lands on the official state with max parameter error 6.4e-6, update error median
    2.0e-5, max 5.1e-4."""
    import jax
    import optax
    from conftest import SHARED_FIXTURES

    from yolox_jax.config import variant_config
    from yolox_jax.train.state import create_train_state
    from yolox_jax.train.step import replicated
    from yolox_jax.weights.convert import from_torch_state_dict, to_torch_state_dict

    cfg = variant_config("yolox_nano")
    with np.load(SHARED_FIXTURES / "loss" / "nano_grads.npz") as f:
        g1 = {k: f[k] for k in f.files if not k.startswith("__")}
    state = create_train_state(from_torch_state_dict(sd0, cfg), tx, 0, use_ema=True)
    grads = from_torch_state_dict({**sd0, **g1}, cfg)["params"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state)

    def state_dict(s):
        return to_torch_state_dict({"params": s.params, "batch_stats": s.batch_stats})

    moved = [k for k in g1 if k in sd0]
    ours1, official1 = state_dict(history[1]), state_dict(state)
    d1 = [rel_err(ours1[k] - sd0[k], official1[k] - sd0[k]) for k in moved]
    assert np.median(d1) < 3e-4, np.median(d1)

    state, m = step(jax.device_put(state, replicated(mesh)), images, labels, use_l1=False)
    assert float(m["total"]) == pytest.approx(float(ref["__step2_total_loss"]), rel=1e-6)
    ours2 = state_dict(state)
    errs = sorted((rel_err(ours2[k], ref[k]), k) for k in moved)
    assert errs[-1][0] < 5e-5, errs[-3:]
    delta = sorted((rel_err(ours2[k] - sd0[k], ref[k] - sd0[k]), k) for k in moved)
    assert delta[-1][0] < 5e-3, delta[-3:]
    assert np.median([d for d, _ in delta]) < 2e-4


# ---- mesh invariance ----------------------------------------------------------------------------


def _compare(a: dict, b: dict, prefix_a: str = "", prefix_b: str = "") -> float:
    keys = [k[len(prefix_a):] for k in a if k.startswith(prefix_a)]
    assert keys and all(prefix_b + k in b for k in keys)
    state_keys = [k for k in keys if not k.startswith("metrics")]
    for k in keys:
        if k.startswith("metrics") and k.endswith(("num_fg", "num_gts")):
            assert a[prefix_a + k] == b[prefix_b + k], k  # same assignment
    return max(rel_err(a[prefix_a + k], b[prefix_b + k]) for k in state_keys)


def _noise_floor(devices_run: dict) -> float:
    """The same single-device step on the batch with its rows reversed: mathematically the same
    state, so this is the float32 summation-order noise of the network (BN over small maps
    amplifies it: ~1e-3 of the 2-step change on some BN biases)."""
    return _compare(devices_run, devices_run, "one_reversed/", "one/")


def test_four_devices_equal_one_device(workers):
    """Batch split 1 row per device: BN statistics and the loss are over the global batch, so the
    sharded step is the single-device step up to float summation order."""
    r = workers.result("devices")
    assert int(r["one/step"]) == int(r["four/step"]) == STEPS
    floor = _noise_floor(r)
    err = _compare(r, r, "four/", "one/")
    assert floor < 1e-2, floor  # measured 6.8e-4
    assert err < max(1e-5, 10 * floor), (err, floor)  # measured 3.8e-4
    for i in range(STEPS):  # step 0 from identical parameters: forward noise only
        for k in ("total", "iou", "obj", "cls", "l1"):
            want = r[f"one/metrics{i}/{k}"]
            assert r[f"four/metrics{i}/{k}"] == pytest.approx(want, rel=5e-5 if i == 0 else 5e-4)
    # the steps did something: BN statistics left their init (0), the EMA (decay ~1e-3 after
    # 2 updates) trails the model slightly, positives were assigned
    stem = "batch_stats/backbone/backbone/stem/conv/bn/mean"
    assert np.abs(r["four/" + stem]).max() > 1e-2
    assert 1e-5 < rel_err(r["four/ema/" + stem], r["four/" + stem]) < 1e-2
    assert r["four/metrics1/num_fg"] > 0


def test_per_device_bn_equals_separate_per_device_steps(workers):
    """bn_sync="device" (the official per-GPU BN + DDP): BN statistics and num_fg per device,
    gradients and BN running statistics averaged. The first SGD step from a zero momentum
    buffer is linear in the gradient (p1 = p0 - lr (1 + m) (g + wd p0)), and the BN / EMA
    updates are linear in the batch statistics, so the 4-device step equals the mean of the
    four 1-row steps on one device (each: BN over its one image, its own num_fg)."""
    r = workers.result("devices")
    keys = [k[len("device/"):] for k in r if k.startswith("device/")
            and not k.startswith("device/metrics") and not k.endswith("step")]
    assert len(keys) > 100
    rows = [f"row{i}/" for i in range(4)]
    floor = _noise_floor(r)
    errs = {k: rel_err(r["device/" + k], np.mean([r[p + k] for p in rows], axis=0)) for k in keys}
    worst = max(errs, key=errs.get)
    assert errs[worst] < max(1e-5, 10 * floor), (worst, errs[worst], floor)
    for k in ("total", "iou", "obj", "cls", "l1"):
        want = np.mean([r[f"{p}metrics0/{k}"] for p in rows])
        assert r[f"device/metrics0/{k}"] == pytest.approx(want, rel=5e-5)
    for k in ("num_fg", "num_gts"):
        assert r[f"device/metrics0/{k}"] == sum(r[f"{p}metrics0/{k}"] for p in rows)
    # and it is not the synchronised-BN step (BN over all 4 images, one num_fg)
    assert abs(r["device/metrics0/total"] / r["one/metrics0/total"] - 1) > 1e-3


def test_two_processes_equal_one_process_with_four_devices(workers):
    """jax.distributed on localhost, 2 processes x 2 CPU devices, each feeding its half of the
    global batch through make_array_from_process_local_data."""
    four = workers.result("devices")
    floor = _noise_floor(four)
    results = [workers.result(f"process{pid}") for pid in (0, 1)]
    for pid, r in enumerate(results):
        assert int(r["step"]) == STEPS
        err = _compare(r, four, "", "four/")
        assert err < max(1e-5, 10 * floor), (pid, err, floor)  # measured 5.1e-4
        for i in range(STEPS):
            want = four[f"four/metrics{i}/total"]
            assert r[f"metrics{i}/total"] == pytest.approx(want, rel=5e-5 if i == 0 else 5e-4)
    # both processes hold the same replicated state (measured: bit-identical)
    assert _compare(results[0], results[1]) < 1e-7


def test_bfloat16_step_is_finite_and_close_to_float32(workers):
    """Model compute in bfloat16, parameters / optimizer / EMA / loss in float32."""
    import jax

    run = SmallRun(jax.devices()[:1], dtype="bfloat16")
    assert run.model.dtype == jax.numpy.bfloat16
    r16 = run(steps=1)
    r32 = workers.result("devices")
    m16 = {k: float(r16[f"metrics0/{k}"]) for k in ("total", "obj", "num_fg", "grad_norm")}
    m32 = {k: float(r32[f"one/metrics0/{k}"]) for k in m16}
    assert all(np.isfinite(v) for v in m16.values()), m16
    # bf16 outputs move SimOTA's discrete assignment a little (measured 9 positives instead of
    # 10), and every term is divided by num_fg; the objectness BCE summed over all anchors is
    # assignment-insensitive: measured 0.3% apart (total 4.7%, num_fg 10%).
    assert m16["obj"] * m16["num_fg"] == pytest.approx(m32["obj"] * m32["num_fg"], rel=2e-2)
    assert abs(m16["num_fg"] - m32["num_fg"]) <= max(2.0, 0.3 * m32["num_fg"])
    assert m16["total"] == pytest.approx(m32["total"], rel=0.15)
    assert m16["total"] != m32["total"]  # the compute really was bfloat16
    for k, v in r16.items():
        if not k.startswith("metrics") and k != "step":
            assert v.dtype == np.float32 and np.isfinite(v).all(), k
    assert r16["metrics0/total"].dtype == np.float32


if __name__ == "__main__":
    sys.path.insert(0, str(TEST_FILE.parent))
    _worker(sys.argv[1:])
