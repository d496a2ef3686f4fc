"""Growing during training: `surgery.widen(unit_values=...)` and `surgery.carry_optimizer_state`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import surgery
from surgery import SurgeryError

MLP = Path(__file__).resolve().parents[1] / "models" / "mlp.onnx"
FAN_OUT = "mlp_1/dense_2_1/Cast/ReadVariableOp:0"
FAN_IN = "mlp_1/dense_1_1/Cast/ReadVariableOp:0"


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


@pytest.fixture(scope="module")
def mlp() -> onnx.ModelProto:
    return onnx.load(MLP)


def test_unit_values_land_in_the_new_positions(mlp):
    fan_out = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    wide = surgery.widen(mlp, {"dense_1": 3}, init="all-zero", unit_values={"dense_1": {"fan-out": fan_out}})
    assert np.array_equal(_initializer(wide, FAN_OUT)[128:], fan_out)
    assert np.array_equal(_initializer(wide, FAN_OUT)[:128], _initializer(mlp, FAN_OUT))
    assert not _initializer(wide, FAN_IN)[:, 128:].any()  # the strategy's zeros where nothing was given
    # Zero fan-in through ReLU keeps the new units silent: outputs bitwise equal.
    report = surgery.verify(mlp, wide, seed=0)
    assert report.equivalent and all(o["bitwise_equal"] for o in report.to_json()["outputs"])


def test_unit_values_fan_in_and_bias(mlp):
    fan_in = np.full((784, 2), 0.5, dtype=np.float32)
    bias = np.array([1.0, -1.0], dtype=np.float32)
    wide = surgery.widen(mlp, {"dense_1": 2}, unit_values={"dense_1": {"fan-in": fan_in, "bias": bias}})
    assert np.array_equal(_initializer(wide, FAN_IN)[:, 128:], fan_in)
    assert not _initializer(wide, FAN_OUT)[128:].any()  # output-zero's fan-out, not given


@pytest.mark.parametrize(
    ("plan", "values", "init", "says"),
    [
        ({"dense_1": 3}, {"dense_1": {"fan-out": np.zeros((2, 10))}}, "output-zero", "must have shape (3, 10)"),
        ({"dense_1": 3}, {"dense_2": {"fan-in": np.zeros((3, 10))}}, "output-zero", "which the plan does not widen"),
        (
            {"dense_1": 3},
            {"dense_1": {"fan_out": np.zeros((3, 10))}},
            "output-zero",
            "choose from fan-in, bias, fan-out",
        ),
        ({"dense_1": 3}, {"dense_1": {"fan-out": np.full((3, 10), np.nan)}}, "output-zero", "non-finite"),
        (
            {"dense_1": 3},
            {"dense_1": {"fan-out": np.zeros((3, 10))}},
            "net2net",
            "cannot be combined with init 'net2net'",
        ),
    ],
)
def test_unit_values_errors_are_one_line(mlp, plan, values, init, says):
    with pytest.raises(SurgeryError, match="unit_values") as error:
        surgery.widen(mlp, plan, init=init, unit_values=values)
    assert says in str(error.value) and "\n" not in str(error.value)


def _trained_mlp(units: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,), name="x"),
            keras.layers.Dense(units, activation="relu", name="dense_1"),
            keras.layers.Dense(3, activation="softmax", name="dense_2"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(64, 6)).astype(np.float32), rng.integers(0, 3, size=64)
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    return model, x, y


def _grown(model, added: int, init: str = "output-zero"):
    import keras

    grown = surgery.to_keras(surgery.widen(surgery.export_keras(model), {"dense_1": added}, init=init, seed=1))
    grown.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return grown


@pytest.mark.slow
def test_carried_state_continues_training_as_before():
    """One step after the widening moves the old weights exactly as the unwidened model's step does
    (the new units are silent and their moments zero), which a fresh optimizer does not."""
    model, x, y = _trained_mlp(4)
    grown, fresh = _grown(model, 2), _grown(model, 2)
    carried = surgery.carry_optimizer_state(model, grown)
    assert [path.split("/", 1)[1] for path in carried] == [
        "dense_1/kernel",
        "dense_1/bias",
        "dense_2/kernel",
        "dense_2/bias",
    ]
    assert int(grown.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 8

    def slot(net, suffix: str) -> np.ndarray:
        return next(v.numpy() for v in net.optimizer.variables if v.name.endswith(suffix))

    momentum = slot(grown, "dense_1_kernel_momentum")
    assert np.array_equal(momentum[:, :4], slot(model, "dense_1_kernel_momentum")) and not momentum[:, 4:].any()
    assert not slot(grown, "dense_2_kernel_velocity")[4:].any()

    for net in (model, grown, fresh):
        net.fit(x[:16], y[:16], epochs=1, batch_size=16, shuffle=False, verbose=0)
    old = model.get_layer("dense_1").kernel.numpy()
    np.testing.assert_allclose(grown.get_layer("dense_1").kernel.numpy()[:, :4], old, rtol=0, atol=1e-6)
    assert np.abs(fresh.get_layer("dense_1").kernel.numpy()[:, :4] - old).max() > 1e-4


@pytest.mark.slow
def test_carry_refuses_what_it_cannot_place():
    model, _, _ = _trained_mlp(4)
    # net2net divides the copied units' fan-out: old rows are not where (or what) they were.
    with pytest.raises(SurgeryError, match=r"dense_2/kernel: the old weights are not the leading entries"):
        surgery.carry_optimizer_state(model, _grown(model, 2, init="net2net"))
    # Told where the old entries are, it carries them.
    grown = _grown(model, 2, init="net2net")
    fan_out = model.get_layer("dense_2").kernel.path
    carried = surgery.carry_optimizer_state(model, grown, positions={fan_out: {0: [0, 1, 2, 3]}})
    assert fan_out in carried
    with pytest.raises(SurgeryError, match="must be 4 distinct indices below 6"):
        surgery.carry_optimizer_state(model, _grown(model, 2), positions={fan_out: {0: [0, 0, 1, 2]}})
    untrained, _, _ = _trained_mlp(4)
    untrained.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(SurgeryError, match="no state yet"):
        surgery.carry_optimizer_state(untrained, _grown(model, 2))
