"""The one interface every structured-matrix family implements.

A family is an ``nn.Module`` that replaces ``nn.Linear(in_features, out_features)``:
``y = x W^T + bias`` with ``W`` (``m x n`` = out x in) held in factored form. Subclasses
implement the weight pieces (``_forward``, ``to_dense``, ``weight_params``,
``_hparams_for``, ``_project``); this base adds leading batch dims, validation
and the bookkeeping every suite relies on (``num_params``, ``macs``, ``rho_actual``, ``macs_ratio``).

Projections run on stacks: ``from_dense_batch`` fits ``B`` same-shape weights at once on a
*stacked* module, one of the family whose every parameter carries a leading dim ``B``
(``_stacked``). A family's ``_project``, ``_project_calibrated``, ``scale_input_`` and
``to_dense`` take such leading dims; its forward does not (a stacked module is only ever
fitted, then split into its members). ``from_dense`` is a stack of one.
"""
from __future__ import annotations

import abc
import functools
import math
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import nn

from structbench import calibrated
from structbench.convergence import Trace, joined
from structbench.errors import NotApplicable, StructbenchError
from structbench.linalg import relative_error

ProgressFn = Callable[[int, float], None]
"""Called as ``progress(iteration, relative_error)`` by iterative projections (for a stack, the
largest relative error among the members still iterating)."""


class Fit(NamedTuple):
    """Hyperparameters chosen for a target ``rho`` and the fraction they actually keep."""

    hparams: dict[str, Any]
    rho_actual: float


class ProjectionReport(NamedTuple):
    """How a module's projection from dense ended (``module.projection_report``)."""

    steps: int
    """Iterations of every iterative phase together (0 for a closed form)."""
    objective: float
    """The final relative error in the objective's own norm: ``||W - What||_F / ||W||_F``
    (Frobenius) or ``||(W - What) G^{1/2}||_F / ||W G^{1/2}||_F`` on the given Gram (calibrated)."""
    converged: bool
    """Whether every iterative phase stopped on its convergence criterion, not at its cap."""


def check_rho(rho: float) -> float:
    if not isinstance(rho, (int, float)) or not (0.0 < float(rho) <= 1.0) or math.isnan(rho):
        raise StructbenchError(f"rho must be a number in (0, 1], got {rho!r}")
    return float(rho)


def check_positive_int(name: str, value: Any, family: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StructbenchError(f"{family}: {name} must be a positive integer, got {value!r}")
    return value


def divisors(k: int) -> list[int]:
    return [d for d in range(1, k + 1) if k % d == 0]


def balanced_split(k: int) -> int:
    """The divisor ``d`` of ``k`` closest to ``sqrt(k)`` from below (``k = d * (k / d)`` with
    the two factors as equal as ``k`` allows): the balanced cores of a fixed-rank structure."""
    return max(d for d in divisors(k) if d * d <= k)


def _ordinary(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor autograd may record: a copy when it was made under inference mode."""
    return t.clone() if t.is_inference() else t


def _check_weight(family: str, where: str, weight: Any, bias: Any, *, batch: bool) -> None:
    """A finite floating-point weight ``(m, n)`` (``(B, m, n)`` for a stack) and bias ``(m,)``
    (``(B, m)``), or one clear error naming what was wrong."""
    dims = 3 if batch else 2
    if not isinstance(weight, torch.Tensor) or weight.dim() != dims or (batch and weight.shape[0] == 0):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        want = "a non-empty stack (B, m, n) of weights" if batch else "a 2-D weight"
        raise StructbenchError(f"{family}: {where} needs {want}, got shape {shape}")
    if not weight.is_floating_point():
        raise StructbenchError(f"{family}: {where} needs a floating-point weight, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise StructbenchError(f"{family}: {where} needs a finite weight; this one has NaN or Inf entries")
    if bias is not None:
        m, n = weight.shape[-2:]
        want = (*weight.shape[:-2], m)
        finite = bool(torch.isfinite(bias).all())
        if bias.shape != want or not bias.is_floating_point() or not finite:
            raise StructbenchError(f"{family}: {where} needs a finite floating-point bias of shape {want} for "
                                   f"a {m}x{n} weight, got {bias.dtype} of shape {tuple(bias.shape)}"
                                   f"{'' if finite else ' with NaN or Inf entries'}")


def _one_gram(gram: Any, n: int, family: str) -> torch.Tensor:
    """``from_dense``'s ``n x n`` Gram as a stack of one (checked here so the error names its shape)."""
    return calibrated.check_gram(gram, n, family).unsqueeze(0)


class Promises(NamedTuple):
    """A family's guarantees, declared once in its file and checked for every family by the
    registry-driven tests (``tests/test_families.py``, ``tests/test_calibrated.py``)."""

    exact_projection: bool = True
    """Whether ``from_dense`` recovers any member of the family exactly (else iterative)."""
    projection_tolerance: float = 1e-5
    """Relative error ``from_dense`` must reach on a random member of its own family."""
    rho_margin: float = 0.05
    """How far below a target rho ``hparams_for`` may land (relative) on the tests' shapes:
    rank-based families land within a rank step; families with a discrete block count (which
    must divide the shape) can fall a whole divisor step short."""
    input_scaling: bool = True
    """Whether ``scale_input_`` takes any positive ``d`` (the structure is closed under every
    diagonal input scaling); a family for which only some ``d`` keep it (a Kronecker sum)
    says False and overrides ``_project_calibrated``."""


class StructuredLinear(nn.Module, abc.ABC):
    """Base class of all families; see the module docstring for the contract."""

    family: ClassVar[str] = "?"  # set by ``register_family``
    promises: ClassVar[Promises] = Promises()
    """What the family's math guarantees, which the registry-driven tests hold it to."""
    compressible: ClassVar[bool] = True
    """False only for the dense baseline, whose ``hparams_for`` ignores ``rho``."""
    plot_order: ClassVar[int] = 100
    """Where reports list the family (ascending; ties by name), and what ``families: all``
    follows."""
    plot_color: ClassVar[str | None] = None
    """The family's colour in every figure; without one it gets a palette colour no
    registered family claims."""
    synthetic_kind: ClassVar[bool] = False
    """Whether the approx suite draws random members of this family as a synthetic kind."""
    mac_handles: ClassVar[dict[str, Callable[[list[Any], list[Any]], int]]] = {}
    """fvcore handles (``aten::op`` -> MACs from input/output shapes) for ops this family's
    forward uses that fvcore does not count, so counted and analytic MACs agree."""
    impls: ClassVar[tuple[str, ...]] = ("torch",)
    """Forward implementations ``use_impl`` switches between: the PyTorch one, and for some
    families a fused one (``triton``, ``structbench.triton_kernels``; optional, GPU)."""
    impl: str = "torch"
    layout_version: ClassVar[int] = 1
    """Goes up when the family's parameters change meaning for the same ``hparams``, so that
    factors stored in another layout (projection caches, saved models) are refused or
    recomputed, never loaded wrong; per family, so one family's change leaves every other
    family's stored factors valid."""
    output_factors: ClassVar[tuple[str, ...]] = ()
    """The parameters that, set to zero, make the weight zero while every other factor still
    gets a gradient (the factor applied last; each part of a sum): what a zero-initialised
    residual output zeroes (``structbench.train.scaling``)."""


    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features, self.family)
        self.out_features = check_positive_int("out_features", out_features, self.family)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def use_impl(self, name: str) -> "StructuredLinear":
        """Run the forward through implementation ``name`` (one of ``impls``); the weights,
        ``to_dense`` and every count stay the same."""
        if name not in self.impls:
            raise StructbenchError(f"{self.family} has no {name!r} forward; accepted: {', '.join(self.impls)}")
        self.impl = name
        return self

    # ---- what a family implements -------------------------------------------------
    @abc.abstractmethod
    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x`` is ``(N, n)`` contiguous; return ``x @ W^T + bias`` as ``(N, m)`` without forming ``W``.

        The bias is the family's to add so that it can ride along in the last kernel
        (``addmm``/``baddbmm``'s beta term, or the pass that restores the output layout):
        a separate add is one more pass over the output, about 5% of a 4096-wide layer's
        forward at 512 tokens on CPU, which the fused dense baseline does not pay.
        """

    @abc.abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The ``m x n`` weight this module applies (no bias); ``(B, m, n)`` for a stacked module."""

    @abc.abstractmethod
    def scale_input_(self, d: torch.Tensor) -> None:
        """Replace ``W`` by ``W diag(d)`` in place, keeping the structure (``d`` of shape ``(n,)``,
        or ``(B, n)``, one per member, for a stacked module).

        Every family's structure survives a diagonal input scaling, which turns a calibrated
        projection under a diagonal Gram into the family's own Frobenius projection
        (``structbench.calibrated``)."""

    @property
    @abc.abstractmethod
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters that rebuild this module's structure (not its values)."""

    @classmethod
    @abc.abstractmethod
    def weight_params(cls, out_features: int, in_features: int, **hparams: Any) -> int:
        """Stored weight parameters for these hyperparameters (bias excluded)."""

    @classmethod
    @abc.abstractmethod
    def _hparams_for(cls, out_features: int, in_features: int, rho: float) -> dict[str, Any]:
        """Largest structure with ``weight_params <= rho * m * n``; raise if none exists."""

    @abc.abstractmethod
    def _project(self, weight: torch.Tensor, **options: Any) -> Trace | None:
        """Set this stacked module's factors to approximate ``weight`` (``(B, m, n)``, float), each
        member its own matrix; an iterative projection returns its ``Trace`` (a closed form None)."""

    def _project_calibrated(
        self,
        weight: torch.Tensor,
        gram: torch.Tensor,
        *,
        damp: float = calibrated.DAMP,
        refine_steps: int = calibrated.REFINE_STEPS,
        refine_lr: float = calibrated.REFINE_LR,
        refine_tol: float = calibrated.TOL,
        **options: Any,
    ) -> Trace | None:
        """Set the factors to minimise ``||(W - What) G^{1/2}||_F`` (``gram`` ``(B, n, n)`` float64,
        checked), as ``_project`` does for the Frobenius norm.

        The default for families without a closed form: the family's own projection of
        ``W D`` scaled back by ``D^{-1}`` (exact when ``G`` is diagonal, so ``G = I`` is the
        plain projection), then Adam on the weighted loss until it stalls (at most
        ``refine_steps``; ``structbench.calibrated.refine``). Families with a closed form
        override this (low-rank, block-diagonal)."""
        calibrated.check_refine(refine_steps, refine_lr, refine_tol, self.family)
        white = calibrated.whitening(gram, damp)
        start = calibrated.diagonal_start(self, weight, white, self._project, options)
        refined = calibrated.refine(self, weight, white, active=~white.diagonal, steps=refine_steps, lr=refine_lr,
                                    tol=refine_tol)
        return joined(start, refined)

    def refine_parameters(self) -> list[nn.Parameter]:
        """The parameters a calibrated refinement may move: every weight factor (not the bias)."""
        return [p for name, p in self.named_parameters() if name != "bias"]

    # ---- shared behaviour ----------------------------------------------------------
    @classmethod
    def effective_params(cls, out_features: int, in_features: int, **hparams: Any) -> int:
        """Weight entries the structure actually uses, the quantity ``rho`` budgets.

        Equal to the stored count for every family but Gaudi-GBLR, which stores
        dense-sized factors and budgets the entries inside its learned bands.
        """
        return cls.weight_params(out_features, in_features, **hparams)

    def kept_params(self) -> int:
        """The effective parameters of this module's structure: what ``rho`` budgets."""
        return self.effective_params(self.out_features, self.in_features, **self.hparams)

    def macs_per_token(self) -> int:
        """Multiply-adds of one token through the weight; equals the effective params by default
        (a Kronecker sum costs more MACs than it stores, and overrides this)."""
        return self.kept_params()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise StructbenchError(
                f"{self.family}: input has {x.shape[-1]} features, layer expects {self.in_features}"
            )
        lead = x.shape[:-1]
        if x.numel() == 0:  # an empty batch gives an empty output, as nn.Linear does
            y = x.new_zeros(*lead, self.out_features)
            return y if self.bias is None else y + self.bias
        y = self._forward(x.reshape(-1, self.in_features), self.bias)
        return y.reshape(*lead, self.out_features)

    def num_params(self) -> int:
        """Trainable parameters, bias included; tests check this against the module itself."""
        bias = self.out_features if self.bias is not None else 0
        return self.weight_params(self.out_features, self.in_features, **self.hparams) + bias

    def macs(self, tokens: int = 1) -> int:
        """Multiply-adds for ``tokens`` rows through the weight (bias adds are not MACs)."""
        return int(tokens) * self.macs_per_token()

    @property
    def rho_actual(self) -> float:
        """Kept fraction of the dense weight's (effective) parameters: what a target ``rho``
        budgets, at most ``rho``."""
        return self.kept_params() / (self.out_features * self.in_features)

    @property
    def macs_ratio(self) -> float:
        """Multiply-adds per token over the dense layer's: ``rho_actual`` for every family but
        the Kronecker sum, which costs more MACs than it stores (above 1 at some budgets)."""
        return self.macs_per_token() / (self.out_features * self.in_features)

    @classmethod
    def hparams_for(cls, out_features: int, in_features: int, rho: float) -> Fit:
        rho = check_rho(rho)
        check_positive_int("out_features", out_features, cls.family)
        check_positive_int("in_features", in_features, cls.family)
        hp = cls._hparams_for(out_features, in_features, rho)
        actual = cls.effective_params(out_features, in_features, **hp) / (out_features * in_features)
        if cls.compressible and actual > rho * (1 + 1e-9):
            raise AssertionError(f"{cls.family}: hparams {hp} keep rho={actual:.6f} > target {rho}")
        return Fit(hp, actual)

    @classmethod
    def hparams_at_rank(cls, out_features: int, in_features: int, rank: int) -> dict[str, Any]:
        """The family's most balanced structure of ``rank`` for an ``out x in`` matrix (the
        fixed-rank regimes of the structure papers: a rank-1 Kronecker product, a rank-2 BTT),
        for a family whose structure has a rank independent of a parameter budget; any other
        raises ``NotApplicable``."""
        check_positive_int("rank", rank, cls.family)
        hp = cls._hparams_at_rank(out_features, in_features, rank)
        try:
            with torch.device("meta"):  # checks the shape against the rank without allocating
                cls(in_features, out_features, **hp)
        except StructbenchError as err:
            raise NotApplicable(str(err)) from None
        return hp

    @classmethod
    def has_fixed_rank(cls) -> bool:
        """Whether ``hparams_at_rank`` gives this family a structure."""
        return cls._hparams_at_rank.__func__ is not StructuredLinear._hparams_at_rank.__func__

    @classmethod
    def _hparams_at_rank(cls, out_features: int, in_features: int, rank: int) -> dict[str, Any]:
        raise NotApplicable(f"{cls.family} has no fixed-rank structure; give it a rho")

    @classmethod
    def hparam_options(cls, out_features: int, in_features: int) -> tuple[Fit, ...]:
        """Every structure the family's own rule (``hparams_for``) picks at some ``rho`` for an
        ``out x in`` matrix, from the fewest kept parameters to the most, none keeping more
        than the dense matrix: the ladder a model-level budget (``structbench.allocate``) mixes
        across layers when one ``rho`` for every layer misses the target.

        Found by walking the rule down from ``rho = 1``, each next target half a parameter
        below the last structure's effective count, until the rule has none (empty where even
        ``rho = 1`` has none: Monarch on an odd shape); the dense baseline has its one structure."""
        check_positive_int("out_features", out_features, cls.family)
        check_positive_int("in_features", in_features, cls.family)
        return _options(cls, out_features, in_features)

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        rho: float | None = None,
        gram: torch.Tensor | None = None,
        progress: ProgressFn | None = None,
        **hparams_and_options: Any,
    ) -> "StructuredLinear":
        """Project a dense ``m x n`` weight onto the family.

        Give either ``rho`` (hyperparameters chosen by ``hparams_for``) or the family's
        hyperparameters; any other keyword is an option of the projection itself. With
        ``gram`` (the ``n x n`` second moment of the layer's inputs) the projection minimises
        the output error on those inputs, ``||(W - What) gram^{1/2}||_F``, instead of
        ``||W - What||_F`` (``_project_calibrated``; options ``damp``, and for iterative
        families ``refine_steps``/``refine_lr``/``refine_tol`` besides their own). Iterative
        projections stop once they stall (``structbench.convergence``); the module's
        ``projection_report`` says how many steps they took and where they ended.
        """
        _check_weight(cls.family, "from_dense", weight, bias, batch=False)
        (module,) = cls.from_dense_batch(weight.unsqueeze(0), None if bias is None else bias.unsqueeze(0), rho=rho,
                                         gram=None if gram is None else _one_gram(gram, weight.shape[1], cls.family),
                                         progress=progress, **hparams_and_options)
        return module

    @classmethod
    def from_dense_batch(
        cls,
        weights: torch.Tensor,
        biases: torch.Tensor | None = None,
        *,
        rho: float | None = None,
        gram: torch.Tensor | None = None,
        progress: ProgressFn | None = None,
        **hparams_and_options: Any,
    ) -> list["StructuredLinear"]:
        """``from_dense`` of each of ``B`` same-shape weights ``(B, m, n)`` (with ``biases``
        ``(B, m)`` and, for the calibrated objective, one Gram per weight, ``gram`` ``(B, n, n)``),
        fitted in one batched computation: one stack of factors, one batched product per step,
        so the per-step overhead of an iterative fit is paid once for the stack. Each member
        is fitted from the same start and stopped by its own criterion, so it is the module
        ``from_dense`` gives for its weight alone (to rounding)."""
        _check_weight(cls.family, "from_dense_batch", weights, biases, batch=True)
        size, m, n = weights.shape
        hp_names = cls.hparam_names()
        hparams = {k: v for k, v in hparams_and_options.items() if k in hp_names}
        options = {k: v for k, v in hparams_and_options.items() if k not in hp_names}
        accepted = cls.projection_options(calibrated=gram is not None)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise StructbenchError(f"{cls.family}: from_dense{' with gram' if gram is not None else ''} does not take "
                                   f"{unknown}; accepted: rho, {', '.join(sorted(hp_names | accepted))}")
        if rho is not None:
            if hparams:
                raise StructbenchError(f"{cls.family}: give rho or hyperparameters {sorted(hparams)}, not both")
            hparams = cls.hparams_for(m, n, rho).hparams
        # SVDs and solves have no half-precision kernels: fit in float32, store in the weight's dtype
        work = torch.float32 if weights.dtype in (torch.float16, torch.bfloat16) else weights.dtype
        if progress is not None and "progress" in accepted:
            options["progress"] = progress
        # Iterative projections run autograd, which inference mode forbids: called under it
        # (serving code), the fit runs outside it on ordinary copies of the inputs.
        with torch.inference_mode(False):
            stacked = cls._stacked(size, n, m, hparams).to(device=weights.device, dtype=work)
            with torch.no_grad():
                target = _ordinary(weights.detach().to(work))
                g = None if gram is None else _ordinary(calibrated.check_gram(gram, n, cls.family, size).to(weights.device))
                trace = stacked._project(target, **options) if g is None else stacked._project_calibrated(target, g, **options)
                zero = ~target.flatten(1).any(1)
                for p in stacked.refine_parameters():  # W = 0 is in every family: its factors are zero, exactly
                    p[zero] = 0
            members = stacked._members(None if biases is None else _ordinary(biases.detach().to(work)))
            for i, member in enumerate(members):
                with torch.no_grad():
                    approx = member.to_dense()
                    objective = (relative_error(target[i], approx) if g is None
                                 else calibrated.weighted_error(target[i], approx, g[i]))
                member.projection_report = ProjectionReport(
                    0 if trace is None else int(trace.steps[i]), objective, True if trace is None else bool(trace.converged[i]))
        return [member.to(weights.dtype) for member in members]

    @classmethod
    def _stacked(cls, size: int, in_features: int, out_features: int, hparams: dict[str, Any]) -> "StructuredLinear":
        """A bias-free module of this structure whose every parameter holds ``size`` members
        along a new leading dim (buffers stay shared): what projections fit a stack on."""
        module = cls(in_features, out_features, bias=False, **hparams)
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(p.detach().unsqueeze(0).repeat(size, *([1] * p.dim()))))
        return module

    def _members(self, biases: torch.Tensor | None) -> list["StructuredLinear"]:
        """The modules of a stacked module's members, each with its own copy of its factors (and
        its bias), buffers as the stack left them."""
        state = self.state_dict()
        stacked = {name for name, _ in self.named_parameters(recurse=False)}
        param = next(iter(self.parameters()))
        members = []
        for i in range(param.shape[0]):
            member = type(self)(self.in_features, self.out_features, bias=biases is not None, **self.hparams)
            member = member.to(device=param.device, dtype=param.dtype)
            own = {k: v[i] if k in stacked else v for k, v in state.items()}
            if biases is not None:
                own["bias"] = biases[i]
            member.load_state_dict(own)
            members.append(member)
        return members

    @classmethod
    def projection_options(cls, calibrated: bool = False) -> frozenset[str]:
        """Keyword options of the (calibrated) projection: ``_project``'s, or ``_project_calibrated``'s
        plus, where it hands the rest on, ``_project``'s."""
        return frozenset(cls.projection_defaults(calibrated))

    @classmethod
    def projection_defaults(cls, calibrated: bool = False) -> dict[str, Any]:
        """Every option of the (calibrated) projection with its default (``progress`` aside): with
        the options given, what a stored projection is keyed on."""
        import inspect

        def keywords(fn: Any) -> tuple[dict[str, Any], bool]:
            params = list(inspect.signature(fn).parameters.values())[2:]  # self, weight
            named = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
            named.pop("gram", None)
            return named, any(p.kind is p.VAR_KEYWORD for p in params)

        plain, _ = keywords(cls._project)
        if not calibrated:
            return plain
        own, passes_on = keywords(cls._project_calibrated)
        return {**plain, **own} if passes_on else own

    @classmethod
    def hparam_names(cls) -> frozenset[str]:
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return frozenset(p for p in params if p not in ("self", "in_features", "out_features", "bias"))

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, {hp}, bias={self.bias is not None}"


@functools.lru_cache(maxsize=None)
def _options(cls: type[StructuredLinear], out_features: int, in_features: int) -> tuple[Fit, ...]:
    """``hparam_options``, kept per family and shape: walking the rule down takes one call per
    structure (thousands for BTT, whose factorisations give many distinct counts)."""
    size, rho = out_features * in_features, 1.0
    found: list[Fit] = []
    while True:
        try:
            found.append(cls.hparams_for(out_features, in_features, rho))
        except (NotApplicable, StructbenchError):  # nothing smaller: the rule's own "no structure at this rho"
            break
        if not cls.compressible:
            break
        rho = (cls.effective_params(out_features, in_features, **found[-1].hparams) - 0.5) / size
    return tuple(reversed(found))
