"""GEM: replace each gradient by the closest one that increases no earlier task's memory loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.agem import AGEM
from clrl.modules.base import ParamGroup, TaskInfo, check_non_negative, check_positive_int
from clrl.modules.distill import distillation_losses, group_parts, network_outputs
from clrl.modules.memory import Budget, MemoryDtype

_PLAIN_PACKAGES = ("torch", "stable_baselines3", "sb3_contrib")


def _nnls() -> Any:
    try:
        from scipy.optimize import nnls
    except ImportError:
        raise ConfigError('GEM needs SciPy for its quadratic program: pip install "clrl[gem]"') from None
    return nnls


def _dual_solution(gram: np.ndarray, memory_dots: np.ndarray, margin: float) -> np.ndarray:
    """The dual variables ``v`` of GEM's quadratic program from the ``K × K`` Gram matrix ``G Gᵀ`` and
    ``G g``: ``v = u + margin`` with ``u ≥ 0`` minimising ``½ uᵀ (G Gᵀ) u + uᵀ G h``, ``h = g + margin Gᵀ1``.

    Solved as the non-negative least squares ``min_{u ≥ 0} ‖A u - b‖`` with ``A = Λ^{1/2} Qᵀ`` and
    ``b = -Λ^{-1/2} Qᵀ G h`` from the eigendecomposition ``G Gᵀ = Q Λ Qᵀ`` (``AᵀA = G Gᵀ`` and
    ``Aᵀb = -G h``; directions with ``λ = 0`` carry no part of ``G h``): the same problem as ``½‖Gᵀu + h‖²``
    over the ``P`` parameters, in ``K`` dimensions.
    """
    gh = memory_dots + margin * gram.sum(axis=1)
    eigenvalues, vectors = np.linalg.eigh(gram)
    keep = eigenvalues > max(float(eigenvalues.max()), 0.0) * 1e-12
    root = np.sqrt(eigenvalues[keep])
    a = root[:, None] * vectors[:, keep].T
    b = -(vectors[:, keep].T @ gh) / root
    u, _ = _nnls()(a, b)
    return np.asarray(u + margin, dtype=np.float64)


def gem_projection(grad: np.ndarray, memories: np.ndarray, margin: float = 0.0) -> np.ndarray | None:
    """GEM's projection of ``grad`` against one reference gradient per earlier task.

    When ``grad`` conflicts with a row of ``memories`` (``⟨g, g_k⟩ < 0`` for some ``k``), GEM solves

        ``min_g̃ ½‖g - g̃‖²  s.t.  ⟨g̃, g_k⟩ ≥ 0 for every k``

    through its dual, ``min_{v ≥ margin} ½ vᵀ G Gᵀ v + gᵀ Gᵀ v`` with ``G`` the rows ``g_k``, and returns
    ``g̃ = Gᵀ v + g``. The dual is ``½‖Gᵀ v + g‖²``, a non-negative least-squares problem in ``v - margin``,
    solved exactly by SciPy's ``nnls`` (Lawson-Hanson active set) in ``K`` dimensions
    (:func:`_dual_solution`): with ``margin=0``, ``g̃`` is the Euclidean projection of ``g`` onto the cone
    of gradients that conflict with no ``g_k``.

    Args:
        grad: The gradient ``g``, shape ``(P,)``.
        memories: The reference gradients ``g_k``, shape ``(K, P)``.
        margin: The paper's ``γ`` (>= 0): a lower bound on the dual variables, which biases the result
            toward updates that also decrease the memory losses (0: the exact projection).

    Returns:
        ``g̃`` (float64), or ``None`` when ``g`` conflicts with no ``g_k`` (it is kept as it is).

    Raises:
        ConfigError: SciPy is not installed (``pip install "clrl[gem]"``).
    """
    grad, memories = np.asarray(grad, dtype=np.float64), np.asarray(memories, dtype=np.float64)
    dots = memories @ grad
    if memories.shape[0] == 0 or bool((dots >= 0).all()):
        return None
    v = _dual_solution(memories @ memories.T, dots, margin)
    return np.asarray(grad + memories.T @ v, dtype=np.float64)


def linear_owners(
    policy: nn.Module, params: Sequence[nn.Parameter]
) -> dict[int, tuple[nn.Linear, str]] | None:
    """Each trainable parameter of ``params`` (by ``id``) with the ``nn.Linear`` it is the ``"weight"`` or
    ``"bias"`` of, when ``policy`` is built of layers whose rows do not mix: torch's and SB3's modules only,
    every one with parameters an exact ``nn.Linear``, no batch normalisation, dropout or in-place
    activation. ``None`` otherwise (or when a trainable parameter belongs to no such layer): then each row's
    contribution to a gradient cannot be read off its layer's input and output."""
    owners: dict[int, tuple[nn.Linear, str]] = {}
    for module in policy.modules():
        if type(module).__module__.split(".")[0] not in _PLAIN_PACKAGES:
            return None
        if type(module) is nn.Linear:
            owners.update((id(p), (module, name)) for name, p in module.named_parameters(recurse=False))
        elif (
            any(True for _ in module.parameters(recurse=False))
            or isinstance(module, nn.modules.batchnorm._NormBase | nn.modules.dropout._DropoutNd)
            or getattr(module, "inplace", False)
        ):
            return None
    if any(p.requires_grad and id(p) not in owners for p in params):
        return None
    return owners


class GEM(AGEM):
    """Gradient Episodic Memory: at every optimiser step, the gradient is replaced by the closest one that
    conflicts with none of the earlier tasks' memory gradients, one constraint per task.

    Memory and loss are A-GEM's (:class:`clrl.AGEM`: a reservoir of states per task with the networks'
    outputs at the end of their task; the memory loss is how far the outputs on stored states have moved,
    each optimiser taking the part it steps). GEM differs in its constraints: a reference gradient
    ``g_k`` per earlier task ``k`` (of the memory loss on ``batch_size`` states of that task), and, when
    the step's gradient ``g`` conflicts with any (``⟨g, g_k⟩ < 0``), the quadratic program of
    :func:`gem_projection`, solved exactly on every such step. A-GEM's single constraint on the average of
    the tasks is the special case of one task. The projection runs after SB3 clips the gradient, just
    before the optimiser step; with ``margin=0`` it never lengthens the gradient (a projection onto a
    convex cone). As with A-GEM, the guarantee is about the gradient given to the optimiser: with Adam the
    step follows its moment estimates (see :class:`clrl.AGEM`).

    Cost per step, once ``K`` earlier tasks are in memory: ``K`` reference gradients and a non-negative
    least-squares problem with ``K`` unknowns (``O(P K²)`` for the Gram matrix, then ``K × K`` on the CPU).
    On a policy of plain linear layers (:func:`linear_owners`: SB3's ``MlpPolicy`` of PPO and A2C on
    discrete actions, DQN, SAC, TD3) the ``K`` gradients come from one forward and one backward pass over
    every task's states, each task's read off its states' rows; other policies take one pass per task.
    With ``refresh=r`` only ``r`` tasks' reference gradients are computed per step, in turn, and the others
    are kept from the step that last computed them (at most ``ceil(K / r) - 1`` steps old): a step then
    costs ``r`` backward passes whatever ``K``.

    Paper: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (NeurIPS),
    https://arxiv.org/abs/1706.08840

    Deviations: the paper's memory loss is the task loss on stored examples; an RL task's loss needs its
    rewards and targets, so the memory loss is A-GEM's output distillation here. The paper computes each
    task's gradient on its whole episodic memory; clrl on a batch of ``batch_size`` states of it per step.
    The dual is solved by SciPy's NNLS, not by quadprog with the paper's code's ``1e-3`` ridge. With
    ``refresh`` set, the constraints of the tasks not refreshed on a step are their gradients at the
    parameters of a few steps before (the paper recomputes every task's at every step: ``refresh=None``).

    Args:
        budget: States kept over all tasks (``"all"``: unbounded); shared evenly by the tasks.
        batch_size: Memory states per task's reference gradient (default: the algorithm's ``batch_size``,
            or the rollout size for A2C).
        margin: The paper's ``γ`` (>= 0; the paper's code uses 0.5): how far the solution leans toward
            decreasing the memory losses; 0 (default) is the exact projection.
        refresh: Earlier tasks whose reference gradient is computed afresh per step, in turn (``None``,
            the default: every task's, as the paper).
        networks: ``"all"`` (default) projects every optimiser's gradient (critics and value too);
            ``"actor"`` only what chooses actions.
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "gem"

    def __init__(
        self,
        budget: Budget = 20_000,
        batch_size: int | None = None,
        margin: float = 0.0,
        networks: Networks = "all",
        require_task_id: bool = True,
        memory_dtype: MemoryDtype = "float32",
        refresh: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, batch_size, networks, require_task_id, "gradient", memory_dtype, verbose)
        self.margin = check_non_negative(margin, "GEM margin")
        self.refresh = None if refresh is None else check_positive_int(refresh, "GEM refresh")
        self._kept: dict[str, dict[int, list[torch.Tensor]]] = {}  # per optimiser: task -> reference
        self._turn: dict[str, int] = {}
        _nnls()  # refuse a missing SciPy now, not at the first conflicting step

    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir; forget the kept reference gradients."""
        super().on_task_start(task)
        self._kept, self._turn = {}, {}

    def _references(self, group: ParamGroup) -> list[list[torch.Tensor]]:
        """Each earlier task's reference gradient for ``group``'s parameters: all computed afresh, or, with
        ``refresh``, that many in turn (and any not computed yet), the others kept."""
        tasks = self.memory.finished()
        kept = self._kept.setdefault(group.optimizer_name, {})
        if self.refresh is None or self.refresh >= len(tasks):
            due = tasks
        else:
            turn = self._turn.get(group.optimizer_name, 0)
            due = [tasks[(turn + i) % len(tasks)] for i in range(self.refresh)]
            self._turn[group.optimizer_name] = (turn + self.refresh) % len(tasks)
        needed = [task for task in tasks if task in due or task not in kept]
        kept.update(zip(needed, self.reference_gradients(group, needed), strict=True))
        return [kept[task] for task in tasks]

    def reference_gradients(self, group: ParamGroup, tasks: list[int]) -> list[list[torch.Tensor]]:
        """The reference gradients of the reservoirs at positions ``tasks``, in that order: from one forward
        and one backward pass over every task's states when the policy's layers allow it
        (:func:`linear_owners`), else one pass per task (:meth:`reference_gradient`). Both draw the same
        states; the gradients agree to float32 rounding."""
        owners = linear_owners(self.sb3_model.policy, group.params) if len(tasks) > 1 else None
        found = None if owners is None else self._gradients_in_one_pass(group, tasks, owners)
        return found if found is not None else [self.reference_gradient(group, [task]) for task in tasks]

    def _gradients_in_one_pass(
        self, group: ParamGroup, tasks: list[int], owners: dict[int, tuple[nn.Linear, str]]
    ) -> list[list[torch.Tensor]] | None:
        """Each task's gradient of its memory loss, read off one pass over all tasks' states.

        The memory loss is a mean of per-state terms, so task ``k``'s gradient of a linear layer's weight is
        ``Σ_{i in k} δ_i a_iᵀ`` (``a_i`` the layer's input on state ``i``, ``δ_i`` the gradient of task
        ``k``'s loss with respect to its output there) and of its bias ``Σ_{i in k} δ_i``: one backward pass
        of the sum of the tasks' losses gives every ``δ_i``. ``None`` when a layer sees anything other than
        one row per state (then each task needs its own pass).
        """
        model, n = self.sb3_model, self.replay_batch_size()
        rows, old = self.memory.sample_outputs(model, n, self._sample_rng, tasks, each=True)
        layers = {owners[id(p)][0] for p in group.params if p.requires_grad}
        calls: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}

        def keep(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            calls[layer].append((inputs[0], output))

        handles = [layer.register_forward_hook(keep) for layer in layers]
        try:
            new = network_outputs(model, rows, group_parts(model, group.optimizer_name, self.networks))
        finally:
            for handle in handles:
                handle.remove()
        seen = [(layer, a, z) for layer, pairs in calls.items() for a, z in pairs if z.requires_grad]
        if any(a.dim() != 2 or a.shape[0] != n * len(tasks) for _, a, _ in seen):
            return None
        weight: dict[nn.Module, torch.Tensor] = {}
        bias: dict[nn.Module, torch.Tensor] = {}
        if seen:
            per_state = sum(distillation_losses(model, old, new, per_row=True).values())
            assert isinstance(per_state, torch.Tensor)
            loss = per_state.view(len(tasks), n).mean(dim=1).sum()
            deltas = torch.autograd.grad(loss, [z for _, _, z in seen], allow_unused=True)
            for (layer, a, _), delta in zip(seen, deltas, strict=True):
                if delta is None:
                    continue
                d = delta.view(len(tasks), n, -1)
                w = torch.einsum("kno,kni->koi", d, a.detach().view(len(tasks), n, -1))
                weight[layer] = weight[layer] + w if layer in weight else w
                bias[layer] = bias[layer] + d.sum(dim=1) if layer in bias else d.sum(dim=1)
        found: list[list[torch.Tensor]] = []
        for k in range(len(tasks)):
            grads = []
            for p in group.params:
                owner = owners.get(id(p))
                source = weight if owner is not None and owner[1] == "weight" else bias
                if p.requires_grad and owner is not None and owner[0] in source:
                    grads.append(source[owner[0]][k])
                else:
                    grads.append(torch.zeros_like(p))
            found.append(grads)
        return found

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Solve GEM's quadratic program when the clipped gradient conflicts with an earlier task's."""
        params = [p for p in group.params if p.grad is not None]
        if not params:
            return
        self.steps += 1
        chosen = {id(p) for p in params}
        rows = []
        for reference in self._references(group):
            picked = [r for p, r in zip(group.params, reference, strict=True) if id(p) in chosen]
            rows.append(torch.cat([r.reshape(-1) for r in picked]))
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        flat = torch.cat([g.reshape(-1) for g in grads])
        # gem_projection's arithmetic, in float64 on the gradients' device: only K × K goes to the CPU.
        memories, g = torch.stack(rows).detach().double(), flat.detach().double()
        dots = memories @ g
        if bool((dots >= 0).all()):
            return
        self.projections += 1
        gram = (memories @ memories.T).cpu().numpy()
        v = torch.as_tensor(_dual_solution(gram, dots.cpu().numpy(), self.margin), device=g.device)
        new = (g + memories.T @ v).to(flat.dtype)
        offset = 0
        for grad in grads:
            grad.copy_(new[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
