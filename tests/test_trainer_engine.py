"""SelfSupervisedTrainer's engine wiring, beyond the loss weights and the GAN step of test_wiring_3d.py: what reaches
the network, which iterations log gradient norms, what the output holds, the non-finite stop, every constructor
argument that MONAI's ``Trainer`` must receive. Written from the mutants mutmut left alive in
``common/engines/trainer.py`` (docs/TESTING.md); each test names the mistake it catches."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import LinearDiscriminator as _D
from ignite.engine import Events
from monai.engines.utils import IterationEvents

from common.engines.trainer import BatchInputs, SelfSupervisedTrainer, scalar_terms, term_gradient_norms, unwrap


class _Net(nn.Module):
    """loss_one = a, loss_two = 2 a (a learnable scalar), pred = a * x; records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.5))
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor, **kwargs) -> dict:
        self.calls.append({"x": x, **kwargs, "autocast": torch.is_autocast_enabled("cpu")})
        return {
            "pred": self.a * x,
            "masked": x * 0 + self.a,
            "note": "not a tensor",
            "loss_one": self.a * 1.0,
            "loss_two": self.a * 2.0,
        }


def _batches(n: int = 1) -> list[dict]:
    return [{"image": torch.full((2, 1, 2, 2), float(i + 1)), "extra": torch.tensor([float(i)])} for i in range(n)]


def _trainer(net: nn.Module | None = None, data=None, **kwargs) -> SelfSupervisedTrainer:
    net = net or _Net()
    return SelfSupervisedTrainer(
        device="cpu",
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=data if data is not None else _batches(),
        network=net,
        optimizer=kwargs.pop("optimizer", None) or torch.optim.SGD(net.parameters(), lr=0.1),
        **kwargs,
    )


def test_unlisted_terms_weigh_one():
    # loss_two is not in loss_weights: it counts with weight 1 (a = 1.5: 0.5 * 1.5 + 1 * 3.0 = 3.75)
    trainer = _trainer(loss_weights={"loss_one": 0.5})
    trainer.run()
    assert trainer.state.output["loss"] == pytest.approx(3.75)
    assert trainer.network.a.item() == pytest.approx(1.5 - 0.1 * (0.5 + 2.0))


def test_network_kwargs_reach_the_network_on_the_engines_device():
    net = _Net()
    trainer = _trainer(net, network_kwargs=BatchInputs({"genetics": "extra", "absent": "missing"}))
    trainer.run()
    call = net.calls[0]
    assert torch.equal(call["genetics"], torch.tensor([0.0])) and call["absent"] is None
    assert torch.equal(call["x"], torch.full((2, 1, 2, 2), 1.0))
    # and without network_kwargs the network gets the image alone
    plain = _Net()
    _trainer(plain).run()
    assert set(plain.calls[0]) == {"x", "autocast"}


def test_batch_inputs_with_a_list_of_keys():
    class _Engine:
        non_blocking = False

        class state:
            device = torch.device("cpu")

    got = BatchInputs(["genetics"])({"genetics": torch.ones(2), "image": torch.zeros(1)}, _Engine())
    assert list(got) == ["genetics"] and torch.equal(got["genetics"], torch.ones(2))


@pytest.mark.parametrize(
    ("interval", "logged"),
    [(0, []), (1, [1, 2, 3, 4, 5, 6]), (3, [1, 3, 6]), (4, [1, 4])],
)
def test_gradient_norms_at_the_first_iteration_and_every_interval(interval, logged):
    seen = []
    trainer = _trainer(data=_batches(6), grad_norm_interval=interval)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        if "grad_norm_one" in engine.state.output:
            seen.append(engine.state.iteration)

    trainer.run()
    assert seen == logged


def test_output_holds_the_input_every_term_and_detached_tensors_only():
    trainer = _trainer(loss_weights={"loss_one": 2.0, "loss_two": 0.5})
    trainer.run()
    out = trainer.state.output
    assert torch.equal(out["image"], torch.full((2, 1, 2, 2), 1.0))
    # the network's tensors, detached; non-tensors left out; terms as plain floats (unweighted)
    assert not out["pred"].requires_grad and not out["masked"].requires_grad and "note" not in out
    assert torch.allclose(out["pred"], torch.full((2, 1, 2, 2), 1.5))
    assert out["loss_one"] == pytest.approx(1.5) and out["loss_two"] == pytest.approx(3.0)
    assert isinstance(out["loss_one"], float) and out["loss"] == pytest.approx(2 * 1.5 + 0.5 * 3.0)
    assert scalar_terms(out) == {"loss": out["loss"], "loss_one": 1.5, "loss_two": 3.0}


def test_a_network_image_entry_replaces_the_raw_input():
    class _Target(_Net):
        def forward(self, x, **kwargs):
            return {**super().forward(x), "image": x[:, :1] * 10}

    trainer = _trainer(_Target())
    trainer.run()
    assert torch.equal(trainer.state.output["image"], torch.full((2, 1, 2, 2), 10.0))


def test_each_step_uses_its_own_gradient_not_an_accumulated_one():
    # two iterations of SGD on loss = a + 2a: each step subtracts lr * 3, never 2 * lr * 3 on the second
    trainer = _trainer(data=_batches(2))
    trainer.run()
    assert trainer.network.a.item() == pytest.approx(1.5 - 2 * 0.1 * 3.0)


def test_non_saturating_is_forwarded_to_the_generator_loss():
    for non_saturating, expected in ((False, lambda z: -F.softplus(z)), (True, lambda z: F.softplus(-z))):
        d = _D()
        trainer = _trainer(
            loss_weights={"loss_one": 0.0, "loss_two": 0.0},
            discriminator=d,
            d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1),
            non_saturating=non_saturating,
        )
        trainer.run()
        logits = torch.tensor([0.5 * 1.5 * 1.0] * 2)  # D(pred) = 0.5 * mean(1.5 * x), x = 1
        assert trainer.state.output["loss_adv"] == pytest.approx(expected(logits).mean().item(), rel=1e-6)
        assert all(p.requires_grad for p in d.parameters())  # frozen for the generator step only


def test_pred_key_selects_the_discriminators_fake_input():
    d = _D()
    trainer = _trainer(
        loss_weights={"loss_one": 0.0, "loss_two": 0.0},
        discriminator=d,
        d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1),
        pred_key="masked",  # masked = a everywhere: logit 0.5 * 1.5
    )
    trainer.run()
    assert trainer.state.output["loss_adv"] == pytest.approx(-F.softplus(torch.tensor(0.75)).item(), rel=1e-6)


def test_discriminator_and_its_optimiser_go_together():
    d = _D()
    with pytest.raises(ValueError, match="discriminator and d_optimizer go together"):
        _trainer(discriminator=d)
    with pytest.raises(ValueError, match="discriminator and d_optimizer go together"):
        _trainer(d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1))


def test_non_finite_loss_stops_naming_epoch_iteration_and_term():
    class _Bad(_Net):
        def forward(self, x, **kwargs):
            return {**super().forward(x), "loss_bad": self.a * float("nan")}

    trainer = _trainer(_Bad(), data=_batches(2))
    with pytest.raises(FloatingPointError) as err:
        trainer.run()
    msg = str(err.value)
    assert "non-finite loss at epoch 1, iteration 1" in msg and "'loss_bad': nan" in msg and "'loss': nan" in msg
    assert "'loss_one'" not in msg  # only the offending terms are named
    assert "last checkpoint written before this step is intact" in msg


def test_non_finite_discriminator_loss_stops_too():
    class _NaND(_D):
        def forward(self, v):
            return super().forward(v) * (float("nan") if not torch.is_grad_enabled() or v.shape[0] == 4 else 1.0)

    d = _NaND()
    trainer = _trainer(discriminator=d, d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="'loss_d': nan"):
        trainer.run()


def test_amp_autocasts_the_forward_in_bfloat16():
    for amp in (False, True):
        net = _Net()
        trainer = _trainer(net, amp=amp)
        trainer.run()
        assert net.calls[0]["autocast"] is amp


def test_constructor_arguments_reach_monais_trainer():
    seen = {"handler": 0, "prepared": 0, "post": 0}

    class _Handler:
        def attach(self, engine):
            engine.add_event_handler(
                Events.ITERATION_COMPLETED, lambda e: seen.__setitem__("handler", seen["handler"] + 1)
            )

    def prepare(batch, device, non_blocking, **kwargs):
        seen["prepared"] += 1
        return batch["image"], None

    def post(data):
        seen["post"] += 1
        return data

    trainer = _trainer(
        data=_batches(5),
        max_epochs=2,
        epoch_length=3,
        train_handlers=[_Handler()],
        prepare_batch=prepare,
        postprocessing=post,
        non_blocking=True,
        key_train_metric=None,
        to_kwargs={"memory_format": torch.preserve_format},
    )
    trainer.run()
    assert trainer.state.epoch_length == 3 and trainer.state.iteration == 6 and trainer.state.max_epochs == 2
    assert seen["handler"] == 6 and seen["post"] == 6
    assert trainer.non_blocking is True and trainer.to_kwargs == {"memory_format": torch.preserve_format}
    assert trainer.prepare_batch is prepare


def test_iteration_update_replaces_the_step():
    calls = []
    trainer = _trainer(iteration_update=lambda engine, batch: calls.append(batch) or {"loss": 0.0})
    trainer.run()
    assert len(calls) == 1 and trainer.network.a.item() == 1.5  # no optimiser step: the custom update ran instead


def test_key_metric_and_its_comparison_are_used():
    from ignite.metrics import Average

    trainer = _trainer(
        data=_batches(3),
        max_epochs=2,
        key_train_metric={"mean_loss": Average(output_transform=lambda out: out["loss"])},
        metric_cmp_fn=lambda current, prev: current < prev,  # lower is better
    )
    trainer.run()
    assert "mean_loss" in trainer.state.metrics and trainer.state.key_metric_name == "mean_loss"
    assert trainer.state.best_metric == pytest.approx(trainer.state.metrics["mean_loss"])  # loss falls each epoch


def test_events_fire_in_order():
    order = []
    trainer = _trainer()
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda e, name=event.name: order.append((name, e.network.a.grad)))
    trainer.run()
    assert [n for n, _ in order] == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"]


def test_term_gradient_norms_by_hand():
    a = nn.Parameter(torch.tensor(2.0))
    b = nn.Parameter(torch.tensor(1.0))
    frozen = nn.Parameter(torch.tensor(5.0), requires_grad=False)
    terms = {"loss_x": 3 * a + 4 * b, "loss_y": a * a, "loss_off": torch.tensor(0.0), "loss_z": frozen * 1.0 + b * 0}
    norms = term_gradient_norms(terms, [a, b, frozen])
    assert norms["grad_norm_x"] == pytest.approx(5.0)  # |(3, 4)|
    assert norms["grad_norm_y"] == pytest.approx(4.0)  # d(a^2)/da = 2a
    assert norms["grad_norm_off"] == 0.0 and norms["grad_norm_z"] == pytest.approx(0.0)
    (terms["loss_x"] + terms["loss_y"]).backward()  # the graph is kept for the real backward
    assert a.grad.item() == pytest.approx(7.0)


def test_unwrap_strips_data_parallel_only():
    net = nn.Linear(1, 1)
    assert unwrap(nn.DataParallel(net)) is net and unwrap(net) is net


def test_learning_rate_state_follows_the_schedule_of_the_given_optimiser():
    from common.engines.learning_rate import LearningRateState

    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = _trainer(net, data=_batches(1), max_epochs=3, optimizer=opt)
    LearningRateState(opt).attach(trainer)
    seen = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _step(engine):
        seen.append(engine.state.learning_rate)
        sched.step()

    trainer.run()
    # read after each iteration's step, before the schedule moves on
    assert seen == pytest.approx([0.1, 0.05, 0.025]) and trainer.state.learning_rate == pytest.approx(0.025)


def test_defaults_train_in_fp32_without_decollation():
    trainer = _trainer()
    assert trainer.use_amp is False and trainer.amp is False  # MONAI's fp16 GradScaler path stays off
    assert trainer.non_blocking is False
    trainer.run()
    assert isinstance(trainer.state.output, dict)  # not decollated into a list of items
    assert isinstance(trainer.state.batch, dict)  # MONAI's decollation (its default) stays off


def test_a_discriminator_returning_its_feature_maps_is_read_at_its_last_output():
    class _PatchD(_D):  # MONAI's PatchDiscriminator: [maps..., logits]
        def forward(self, v):
            logits = super().forward(v)
            return [logits * 100, logits * -100, logits]

    d = _PatchD()
    trainer = _trainer(
        loss_weights={"loss_one": 0.0, "loss_two": 0.0},
        discriminator=d,
        d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1),
    )
    trainer.run()
    assert trainer.state.output["loss_adv"] == pytest.approx(-F.softplus(torch.tensor(0.75)).item(), rel=1e-6)


def test_key_metric_without_a_comparison_uses_monais_default():
    from ignite.metrics import Average

    trainer = _trainer(
        data=_batches(2), max_epochs=2, key_train_metric={"m": Average(output_transform=lambda o: -o["loss"])}
    )
    trainer.run()  # higher is better by default: -loss rises as the loss falls
    assert (
        trainer.state.best_metric == pytest.approx(trainer.state.metrics["m"]) and trainer.state.best_metric_epoch == 2
    )


def test_additional_metrics_are_computed():
    from ignite.metrics import Average

    trainer = _trainer(
        data=_batches(2),
        key_train_metric={"first": Average(output_transform=lambda o: o["loss_one"])},
        additional_metrics={"mean_loss": Average(output_transform=lambda o: o["loss"])},
    )
    trainer.run()
    # one SGD step of 0.3 between the two iterations: loss 4.5 then 3.6, loss_one 1.5 then 1.2
    assert trainer.state.metrics["mean_loss"] == pytest.approx((4.5 + 3.6) / 2)
    assert trainer.state.metrics["first"] == pytest.approx((1.5 + 1.2) / 2)


def test_messages_are_whole():
    trainer = _trainer()
    with pytest.raises(ValueError) as err:
        trainer._iteration(trainer, None)
    assert str(err.value) == "Must provide batch data for current iteration."
    trainer.state.epoch, trainer.state.iteration = 3, 7
    with pytest.raises(FloatingPointError) as err:
        trainer._check_finite({"loss_x": torch.tensor(float("inf"))})
    assert str(err.value) == (
        "non-finite loss at epoch 3, iteration 7: {'loss_x': inf}. Training stopped; the last checkpoint written "
        "before this step is intact. Check the data (NaN/Inf voxels, constant volumes) and lower the learning rate."
    )
    d = _D()
    with pytest.raises(ValueError) as err:
        _trainer(discriminator=d)
    assert str(err.value) == "discriminator and d_optimizer go together: give both or neither"


def test_scalar_terms_keep_losses_and_gradient_norms_only():
    out = {"loss": 1.0, "loss_a": 2.0, "grad_norm_a": 3.0, "image": torch.zeros(1), "lossy": 4.0, "pred": 5.0}
    assert scalar_terms(out) == {"loss": 1.0, "loss_a": 2.0, "grad_norm_a": 3.0}


def test_autocast_is_bfloat16_on_every_device_type():
    # CPU autocast defaults to bfloat16 anyway; CUDA's default is float16, which would need a GradScaler
    import warnings

    trainer = _trainer(amp=True)
    for device in ("cpu", "cuda"):
        trainer.state.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA is not available": the context is still built
            assert trainer._autocast().fast_dtype == torch.bfloat16


def test_the_generator_step_computes_no_discriminator_gradients():
    # D's parameters are frozen while the generator's loss is built: D's gradient is computed once per
    # iteration (its own step), not twice (the generator's backward would otherwise fill it too)
    d = _D()
    computed = []
    d.w.register_hook(lambda grad: computed.append(float(grad)))
    trainer = _trainer(
        data=_batches(2), discriminator=d, d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1), grad_norm_interval=1
    )
    trainer.run()
    assert len(computed) == 2  # two iterations, one discriminator backward each
