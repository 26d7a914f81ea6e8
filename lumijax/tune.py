"""Hardware-aware fine-tuning and quantizer/wavelength co-design.

:func:`finetune` trains a photonic model under its hardware model: every
step draws fresh detector noise from the cores' ``noise`` streams, weights
pass through their LSQ fake quantizers (straight-through rounding, learnable
scales), and crosstalk follows the current channel spacing. :func:`codesign`
also trains one channel spacing shared by every core, through a sigmoid
parametrisation that keeps it inside ``[min_spacing_nm, fsr_nm/N]``, with
a penalty on the optical band the grid occupies (``N·Δ``). Fine-tuning can
also distil a teacher (the float model) next to the labels.

Both take a :class:`jax.sharding.Mesh`: the batch is split along the mesh's
first axis and the model replicated, so one script runs data parallel on
several devices, and across hosts after ``jax.distributed.initialize``
(there each process passes its own data, and ``batch_size`` is per process).

Batch norms keep their running statistics (the exported graph folds them);
their scale and shift train like any other parameter.

Converter ranges are hardware settings: set them once with
:func:`calibrate_ranges` before tuning, and tuning trains the weights for
those DAC and ADC ranges, which the exported file then keeps. Tracking the
ranges during training, or recalibrating after it, moves them away from
what the weights were trained for: on the digits ResNet-10 neither did
better than fixed ranges (tracking also made steps 2.5× slower), and on the
character GPT recalibrating after tuning raised the perplexity from 6.6 to
7.4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lumijax import hostmem
from lumijax import hardware as hw
from lumijax import layers

Array = jax.Array
Data = tuple[Any, Any]

#: Every parameter but the cores' raw channel spacings (fixed in
#: fine-tuning, driven by the shared spacing in co-design).
WEIGHTS_AND_SCALES = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("channel_spacing_nm")))


@dataclasses.dataclass
class History:
    """What a tuning run measured, one entry per step.

    Attributes:
      loss: the training loss (task loss plus any penalty).
      task_loss: the cross-entropy alone.
      accuracy: the fraction of the batch's targets predicted (argmax).
      channel_spacing_nm: the shared spacing after each step (co-design).
    """

    loss: list[float] = dataclasses.field(default_factory=list)
    task_loss: list[float] = dataclasses.field(default_factory=list)
    accuracy: list[float] = dataclasses.field(default_factory=list)
    channel_spacing_nm: list[float] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def plot(self, path: str | Path) -> Path:
        """Loss and batch accuracy against step (and the spacing, when
        co-designed) to a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 3 if self.channel_spacing_nm else 2
        fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5))
        axes[0].plot(self.loss, label="loss")
        if self.task_loss != self.loss:
            axes[0].plot(self.task_loss, label="task loss")
            axes[0].legend()
        axes[0].set(xlabel="step", ylabel="cross-entropy (nats)", title="loss under the hardware")
        axes[1].plot(self.accuracy)
        axes[1].set(xlabel="step", ylabel="batch accuracy", title="accuracy under the hardware")
        if self.channel_spacing_nm:
            axes[2].plot(self.channel_spacing_nm)
            axes[2].set(xlabel="step", ylabel="channel spacing (nm)", title="co-designed spacing")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def cross_entropy(logits: Array, targets: Array) -> tuple[Array, Array]:
    """Mean softmax cross-entropy (nats) and accuracy of integer ``targets``
    over the last axis of ``logits`` (classes or vocabulary)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == targets)
    return loss, accuracy


def mixed_cross_entropy(logits: Array, targets: Array, partners: Array, share: Array) -> tuple[Array, Array]:
    """Mean cross-entropy (nats) of inputs blended by :func:`mixup_inputs`:
    ``share·CE(targets) + (1 − share)·CE(partners)`` per example, and the
    accuracy against the larger part's label.

    Args:
      logits: ``(B, classes)``.
      targets, partners: integer labels ``(B,)`` of the two inputs blended.
      share: ``(B,)`` weight of ``targets``' input in the blend.
    """
    classes = logits.shape[-1]
    soft = share[:, None] * jax.nn.one_hot(targets, classes) + (1.0 - share[:, None]) * jax.nn.one_hot(partners, classes)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft).mean()
    dominant = jnp.where(share >= 0.5, targets, partners)
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == dominant)


def mixup_inputs(x: Array, key: Array) -> tuple[Array, Array, Array]:
    """Mixup (Zhang et al. 2018): blends every example of the batch ``x``
    ``(B, ...)`` with another one, ``x'ᵢ = λᵢ·xᵢ + (1 − λᵢ)·x_π(i)``, for a
    random permutation ``π`` and ``λᵢ ~ U(0, 1)``; returns ``x'``, ``π``
    ``(B,)`` and ``λ`` ``(B,)``. Blends lie between the training examples,
    where the decision boundaries run."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"mixup blends floating inputs (images, features); got {x.dtype} (token ids do not blend)")
    permutation_key, share_key = jax.random.split(key)
    permutation = jax.random.permutation(permutation_key, x.shape[0])
    share = jax.random.uniform(share_key, (x.shape[0],), x.dtype)
    weight = share.reshape((-1,) + (1,) * (x.ndim - 1))
    return weight * x + (1.0 - weight) * x[permutation], permutation, share


def distillation_loss(logits: Array, teacher_logits: Array, temperature: float = 2.0) -> Array:
    """Knowledge distillation (Hinton et al. 2015): ``T²`` times the mean
    ``KL(softmax(teacher/T) ‖ softmax(logits/T))`` over all but the last
    axis (nats). The ``T²`` keeps its gradient's size independent of ``T``."""
    log_student = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    log_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature ** 2 * optax.losses.kl_divergence_with_log_targets(log_student, log_teacher).mean()


@nnx.jit
def _evaluate_batch(model: nnx.Module, x: Array, y: Array) -> tuple[Array, Array]:
    return cross_entropy(model(x), y)


def evaluate(model: nnx.Module, data: Data, batch_size: int = 256, draws: int = 1) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on all of ``data`` in its
    current mode, averaged over ``draws`` passes (each with fresh noise from
    the cores' streams in ``"noisy"`` mode; one pass is exact otherwise)."""
    inputs, targets = _check_data(data)
    if draws < 1:
        raise ValueError(f"draws = {draws}: need at least 1")
    if all(core.mode != "noisy" for core in layers.photonic_cores(model)):
        draws = 1
    totals = np.zeros(2)
    for _ in range(draws):
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
            totals += len(x) * np.asarray(_evaluate_batch(model, x, y), np.float64)
    return tuple(float(v) for v in totals / (draws * len(inputs)))


@nnx.jit
def _observe_batch(model: nnx.Module, x: Array) -> None:
    model(x, observe=True)


def calibrate_ranges(model: nnx.Module, inputs: Any, batch_size: int = 64) -> nnx.Module:
    """Sets every core's DAC and ADC ranges from ``inputs`` (their tracked
    percentile ranges, see :class:`~lumijax.quant.DynamicRangeEstimator`),
    as the exported file and the runtime will use them; returns ``model``."""
    inputs = np.asarray(inputs)
    for start in range(0, len(inputs) - batch_size + 1, batch_size):
        _observe_batch(model, inputs[start:start + batch_size])
    return model


def apply_hardware(model: nnx.Module, hardware: hw.HardwareConfig, mode: layers.Mode = "noisy") -> nnx.Module:
    """Puts every core of ``model`` on ``hardware`` (its channel spacing
    included) in ``mode``; returns ``model``. Weight bits stay the layers'."""
    for core in layers.photonic_cores(model):
        core.hardware = hardware
        core.estimator = dataclasses.replace(core.estimator, hardware=hardware)
        core.channel_spacing_nm[...] = jnp.float32(hardware.channel_spacing_nm)
    factory = getattr(model, "factory", None)
    if factory is not None:  # converted models save their factory's hardware
        model.factory = dataclasses.replace(factory, hardware=hardware)
    return layers.set_mode(model, mode)


def spacing_range(hardware: hw.HardwareConfig, min_spacing_nm: float, max_spacing_nm: float | None = None) -> tuple[float, float]:
    """The spacing range ``(min, max)`` in nm (``max`` by default ``FSR/N``);
    raises ``ValueError`` unless it holds ``hardware``'s spacing inside."""
    hi = float(hardware.fsr_nm) / hardware.num_channels if max_spacing_nm is None else float(max_spacing_nm)
    start = float(hardware.channel_spacing_nm)
    if not 0.0 < min_spacing_nm < start < hi:
        raise ValueError(f"the spacing range must hold the start: 0 < min_spacing_nm {min_spacing_nm} < "
                         f"channel_spacing_nm {start} < max_spacing_nm {hi}")
    return float(min_spacing_nm), hi


class SharedSpacing(nnx.Module):
    """A model whose cores all take one channel spacing
    ``Δ = lo + (hi − lo)·sigmoid(θ)``, with ``θ`` the trained parameter.

    Args:
      model: the photonic model; its cores' spacings are overwritten.
      hardware: the hardware the cores simulate (its spacing starts ``θ``).
      min_spacing_nm: the smallest spacing allowed (nm).
      max_spacing_nm: the largest (nm); default the grid's limit ``FSR/N``.
    """

    def __init__(self, model: nnx.Module, hardware: hw.HardwareConfig, min_spacing_nm: float = 0.05,
                 max_spacing_nm: float | None = None):
        hi = spacing_range(hardware, min_spacing_nm, max_spacing_nm)[1]
        start = float(hardware.channel_spacing_nm)
        self.model = model
        self.hardware = hardware
        self.min_spacing_nm, self.max_spacing_nm = float(min_spacing_nm), hi
        fraction = (start - min_spacing_nm) / (hi - min_spacing_nm)
        self.spacing_logit = nnx.Param(jnp.float32(np.log(fraction / (1.0 - fraction))))

    def spacing_nm(self) -> Array:
        """The current spacing (nm)."""
        span = self.max_spacing_nm - self.min_spacing_nm
        return self.min_spacing_nm + span * jax.nn.sigmoid(self.spacing_logit[...])

    def band_nm(self) -> Array:
        """Optical band the grid occupies, ``N·Δ`` (nm)."""
        return self.hardware.num_channels * self.spacing_nm()

    def __call__(self, *inputs: Array) -> Array:
        spacing = self.spacing_nm()
        for core in layers.photonic_cores(self.model):
            core.channel_spacing_nm[...] = spacing
        return self.model(*inputs)

    def chosen_hardware(self) -> hw.HardwareConfig:
        """The hardware with the spacing chosen so far."""
        return self.hardware.replace(channel_spacing_nm=float(self.spacing_nm()))


def _spacing_or_weights(params: Any) -> Any:
    """Optimizer labels: ``"spacing"`` for the shared spacing's logit."""
    def label(path, _):
        return "spacing" if any(getattr(k, "key", None) == "spacing_logit" for k in path) else "weights"
    return jax.tree_util.tree_map_with_path(label, params)


def codesign_loss(tuned: SharedSpacing, x: Array, y: Array, band_weight: float, reference_band_nm: float) -> tuple[Array, tuple[Array, Array]]:
    """Cross-entropy plus ``band_weight·N·Δ/reference_band_nm``; returns the
    loss and (task loss, accuracy)."""
    task, accuracy = cross_entropy(tuned(x), y)
    return task + band_weight * tuned.band_nm() / reference_band_nm, (task, accuracy)


def _check_data(data: Data) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (inputs, integer targets)")
    inputs, targets = np.asarray(data[0]), np.asarray(data[1])
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"data: {len(inputs)} inputs and {len(targets)} targets; need the same, non-zero count")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"data: targets must be integer class or token ids, got {targets.dtype}")
    if np.issubdtype(inputs.dtype, np.floating) and not np.isfinite(inputs).all():
        raise ValueError("data: the inputs hold NaN or infinite values")
    return inputs, targets


def batches(data: Data, batch_size: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches of exactly ``batch_size`` (epoch by epoch)."""
    inputs, targets = _check_data(data)
    if not 0 < batch_size <= len(inputs):
        raise ValueError(f"batch_size = {batch_size}: need 1..{len(inputs)} (the data's size)")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(inputs))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield inputs[index], targets[index]


def _replicate(x: Any, sharding: NamedSharding) -> Array:
    """``x`` (the same value in every process) on every device of
    ``sharding``'s mesh, whose devices may belong to other processes."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):  # keys travel as their words
        return jax.random.wrap_key_data(_replicate(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def _place(mesh: Mesh | None, *objects: nnx.Object) -> Callable[[np.ndarray], Any]:
    """Replicates the state of ``objects`` (model, optimizer, teacher) over
    ``mesh`` and returns how to place a batch (split along the mesh's first
    axis); without a mesh, batches stay as given."""
    if mesh is None:
        return jnp.asarray
    replicated = NamedSharding(mesh, PartitionSpec())
    nnx.update(objects, jax.tree.map(lambda x: _replicate(x, replicated), nnx.state(objects)))
    batch = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    if jax.process_count() > 1:  # each process feeds its own share of the global batch
        return lambda x: jax.make_array_from_process_local_data(batch, x)
    return lambda x: jax.device_put(x, batch)


class TrainingStep:
    """The optimizer step of tuning, jitted over the state of ``module``,
    its optimizer ``opt`` and an optional ``teacher`` as one pytree.

    ``step(x, y, key) → (loss, task loss, accuracy)``: ``prepare(teacher, x,
    y, key)`` (default: none) turns the batch into the inputs and targets of
    ``loss_fn(module, x, targets) → (loss, (task loss, accuracy))``, whose
    gradient with respect to :data:`WEIGHTS_AND_SCALES` the optimizer applies.

    The objects are split once (``nnx.split``) and merged only while the
    step is traced, so a step costs one call of a jitted function on arrays,
    whatever the number of variables. The step works on its own copy of the
    state of ``module`` and ``opt``, donated to each step and updated in
    place (arrays the objects share with others, as clones do, are never
    touched); :meth:`sync` writes it into the objects, which keep their
    state from before the first step until then.

    On CPU the step's temporaries are kept in the process between steps
    (:mod:`lumijax.hostmem`: heaps of at most 16 MiB, and, with
    ``retain_host_memory``, glibc told to keep what a step frees), rather
    than mapped afresh and faulted in page by page at every step.
    """

    def __init__(self, loss_fn: Callable, module: nnx.Module, opt: nnx.Optimizer, teacher: nnx.Module | None = None,
                 prepare: Callable | None = None, retain_host_memory: bool = True):
        self._objects = (module, opt)
        self._teacher = teacher
        self._graphdef, state = nnx.split(self._objects)
        self.state = jax.tree.map(jnp.copy, state)
        teacher_graphdef, self._teacher_state = nnx.split(teacher)

        def step(state, teacher_state, x, y, key):
            module, opt = nnx.merge(self._graphdef, state)
            teacher = nnx.merge(teacher_graphdef, teacher_state)
            if prepare is not None:
                x, y = prepare(teacher, x, y, key)
            grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, WEIGHTS_AND_SCALES), has_aux=True)
            (loss, (task, accuracy)), grads = grad_fn(module, x, y)
            opt.update(module, grads)
            return nnx.state((module, opt)), nnx.state(teacher), (loss, task, accuracy)

        options = hostmem.compiler_options()
        if options is not None and retain_host_memory:
            hostmem.retain_freed_memory()
        self._step = jax.jit(step, donate_argnums=0, compiler_options=options)

    def __call__(self, x: Array, y: Array, key: Array) -> tuple[Array, Array, Array]:
        self.state, self._teacher_state, values = self._step(self.state, self._teacher_state, x, y, key)
        return values

    def sync(self) -> None:
        """Writes the current state into the module, optimizer and teacher."""
        nnx.update(self._objects, self.state)
        if self._teacher is not None:
            nnx.update(self._teacher, self._teacher_state)


def _train(module: nnx.Module, loss_fn: Callable, data: Data, optimizer: optax.GradientTransformation, steps: int,
           batch_size: int, mesh: Mesh | None, seed: int, progress: bool, description: str,
           after_step: Callable[[nnx.Module, History], None] | None = None,
           teacher: nnx.Module | None = None, prepare: Callable | None = None) -> History:
    """The training loop: ``prepare(teacher, x, y, key)`` (traced in the
    step, with a fresh key each step) turns a batch into the inputs and the
    targets ``loss_fn(module, x, targets)`` takes; by default they are the
    batch itself."""
    if mesh is not None and batch_size % mesh.shape[mesh.axis_names[0]]:
        raise ValueError(f"batch_size = {batch_size} does not split over the {mesh.shape[mesh.axis_names[0]]} devices "
                         f"of mesh axis {mesh.axis_names[0]!r}")
    module.eval()  # batch norms on their running statistics
    opt = nnx.Optimizer(module, optimizer, wrt=WEIGHTS_AND_SCALES)
    place = _place(mesh, module, opt, *([] if teacher is None else [teacher]))
    step = TrainingStep(loss_fn, module, opt, teacher, prepare)
    history = History()
    keys = jax.random.split(jax.random.key(seed), steps)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[accuracy]:.1%}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task_id = bar.add_task(description, total=steps, loss=float("nan"), accuracy=0.0)

        def record(values: tuple[Array, ...]) -> None:
            loss, task, accuracy = (float(v) for v in values)
            if not np.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at step {len(history.loss)}; lower the learning rate")
            history.loss.append(loss)
            history.task_loss.append(task)
            history.accuracy.append(accuracy)
            bar.update(task_id, advance=1, loss=loss, accuracy=accuracy)

        # A step's numbers are read once the next step is dispatched, so the
        # host prepares one step while the device runs the other; with an
        # ``after_step``, which reads the module, each step is read at once.
        pending = None
        try:
            for key, (x, y) in zip(keys, batches(data, batch_size, seed)):
                values = step(place(x), place(y), key)
                if pending is not None:
                    record(pending)
                pending = values
                if after_step is not None:
                    record(pending)
                    pending = None
                    step.sync()
                    after_step(module, history)
            if pending is not None:
                record(pending)
        finally:
            step.sync()
    return history


def warmup_cosine_adam(peak_learning_rate: float, steps: int, warmup_fraction: float = 0.1,
                       final_fraction: float = 0.05) -> optax.GradientTransformation:
    """Adam whose learning rate rises linearly from 0 to
    ``peak_learning_rate`` over the first ``warmup_fraction`` of ``steps``,
    then follows a half cosine down to ``final_fraction·peak``: the usual
    schedule for fine-tuning a trained model, whose last iterate is then not
    one large step away from the optimum it settled in."""
    if steps < 1 or peak_learning_rate <= 0:
        raise ValueError(f"steps = {steps} and peak_learning_rate = {peak_learning_rate} must be positive")
    if not (0.0 <= warmup_fraction < 1.0 and 0.0 <= final_fraction <= 1.0):
        raise ValueError(f"warmup_fraction = {warmup_fraction} must lie in [0, 1) and final_fraction = "
                         f"{final_fraction} in [0, 1]")
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak_learning_rate, int(warmup_fraction * steps), steps,
                                                  final_fraction * peak_learning_rate)
    return optax.adam(schedule)


def finetune(model: nnx.Module, data: Data, hardware: hw.HardwareConfig | None = None,
             optimizer: optax.GradientTransformation | None = None, steps: int = 200, *, batch_size: int = 64,
             mesh: Mesh | None = None, seed: int = 0, progress: bool = True, mode: layers.Mode = "noisy",
             teacher: nnx.Module | None = None, distillation_weight: float = 0.5,
             temperature: float = 2.0, mixup: bool = False) -> History:
    """Fine-tunes ``model`` in place under its hardware (noisy by default).

    With a ``teacher`` (typically the float model the photonic one was
    converted from), the loss is ``(1 − α)·CE(labels) + α·KD`` with
    :func:`distillation_loss`: the teacher's soft targets still carry
    information where a well-trained model already fits every training
    label, so they guide the weights back towards the float model's outputs.
    With ``mixup`` the teacher also labels blends of training inputs, the
    regions between the examples where the hardware's errors move the
    decision boundaries. On the digits ResNet-10 at 4 bits, a 5-fold
    cross-validation over all 1797 digits won back all of the hardware's
    cost with plain distillation (``α = 0.5``) in 300 steps (13.4 of the
    13.2 images lost) and 82% in 150. At 150 steps with signed DACs (half
    the levels) it won back 76%, and 71% with mixup
    (``distillation_weight=1``): the same, within one image.

    Args:
      model: a photonic model (converted GPT, ResNet or program) whose
        ``model(x)`` gives logits over the last axis.
      data: ``(inputs, targets)``: e.g. images ``(N, C, H, W)`` with class
        ids ``(N,)``, or token ids ``(N, T)`` with next tokens ``(N, T)``.
      hardware: the hardware to train under; default, the cores' own.
      optimizer: an optax transformation; default
        :func:`warmup_cosine_adam` peaking at 3e-4 over ``steps``.
      steps: optimizer steps.
      batch_size: examples per step (divisible by the mesh's first axis).
      mesh: shard the batch over this mesh's first axis.
      seed: batch order.
      progress: show a progress bar.
      mode: the cores' mode while training: ``"noisy"``; ``"ideal"``
        trains the float model alike (a control for what the extra
        training alone gives).
      teacher: a model whose logits (of the same shape) are distilled;
        it is run as it is (put it in ``"ideal"`` mode) and not trained.
      distillation_weight: ``α``, the distillation term's share, in [0, 1].
      temperature: the softmax temperature ``T`` of the distillation.
      mixup: train on blends of pairs of the batch's inputs
        (:func:`mixup_inputs`, fresh each step), with the labels blended
        alike (:func:`mixed_cross_entropy`) and the teacher run on the
        blends. Needs floating inputs and integer class labels ``(N,)``.

    Returns:
      The loss and accuracy of every step (``task_loss`` is the
      cross-entropy with the labels).
    """
    if not 0.0 <= distillation_weight <= 1.0 or temperature <= 0:
        raise ValueError(f"distillation_weight = {distillation_weight} must lie in [0, 1] and temperature = "
                         f"{temperature} be positive")
    if mixup:
        inputs, targets = _check_data(data)
        if not np.issubdtype(inputs.dtype, np.floating) or targets.ndim != 1:
            raise ValueError(f"mixup needs floating inputs and one class label per example; got {inputs.dtype} "
                             f"inputs and targets of shape {targets.shape}")
    if hardware is not None:
        apply_hardware(model, hardware, mode)
    else:
        layers.set_mode(model, mode)

    def prepare(teacher, x, y, key):
        targets = {"labels": y}
        if mixup:
            x, permutation, targets["share"] = mixup_inputs(x, key)
            targets["partners"] = y[permutation]
        if teacher is not None:
            targets["teacher"] = jax.lax.stop_gradient(teacher(x))
        return x, targets

    def loss_fn(model, x, targets):
        logits = model(x)
        if mixup:
            task, accuracy = mixed_cross_entropy(logits, targets["labels"], targets["partners"], targets["share"])
        else:
            task, accuracy = cross_entropy(logits, targets["labels"])
        if teacher is None:
            return task, (task, accuracy)
        distilled = distillation_loss(logits, targets["teacher"], temperature)
        return (1.0 - distillation_weight) * task + distillation_weight * distilled, (task, accuracy)

    return _train(model, loss_fn, data, optimizer or warmup_cosine_adam(3e-4, steps), steps, batch_size, mesh, seed, progress,
                  "fine-tuning under the hardware", teacher=teacher, prepare=prepare)


def codesign(model: nnx.Module, data: Data, hardware: hw.HardwareConfig,
             optimizer: optax.GradientTransformation | None = None, steps: int = 200, *, band_weight: float = 0.05,
             min_spacing_nm: float = 0.05, reference_spacing_nm: float = 0.8, spacing_learning_rate: float = 0.05,
             batch_size: int = 64,
             mesh: Mesh | None = None, seed: int = 0, progress: bool = True) -> tuple[nnx.Module, hw.HardwareConfig, History]:
    """Trains the weights, the LSQ scales and one channel spacing together.

    The loss is the cross-entropy plus ``band_weight`` times the band
    ``N·Δ`` relative to the reference grid's ``N·reference_spacing_nm``:
    the spacing shrinks while the task loss it costs stays below the band
    it saves.

    Args:
      model: as for :func:`finetune`; trained in place, in ``"noisy"`` mode.
      data: ``(inputs, targets)`` as for :func:`finetune`.
      hardware: the starting hardware (its spacing is the first guess).
      optimizer: for the weights and scales; default Adam, learning rate 1e-3.
      band_weight: weight of the band penalty (nats per reference band).
      min_spacing_nm: the smallest spacing allowed (nm).
      reference_spacing_nm: the grid the band is measured against (nm).
      spacing_learning_rate: Adam's learning rate for the spacing's logit.

    Returns:
      The tuned model, the hardware with the spacing it chose and the history.
    """
    apply_hardware(model, hardware, "noisy")
    tuned = SharedSpacing(model, hardware, min_spacing_nm)
    reference_band_nm = hardware.num_channels * reference_spacing_nm

    def loss_fn(tuned, x, y):
        return codesign_loss(tuned, x, y, band_weight, reference_band_nm)

    def record(tuned, history):
        history.channel_spacing_nm.append(float(tuned.spacing_nm()))

    optimizer = optax.multi_transform(
        {"spacing": optax.adam(spacing_learning_rate), "weights": optimizer or optax.adam(1e-3)}, _spacing_or_weights)
    history = _train(tuned, loss_fn, data, optimizer, steps, batch_size, mesh, seed, progress,
                     "co-designing scales and spacing", record)
    chosen = tuned.chosen_hardware()
    apply_hardware(model, chosen, "noisy")
    return model, chosen, history
