"""The names a `@function` layer's generated autograd.Function introduces, chosen around the spec's names.

A spec name keeps its name in the generated code. What the code adds for itself gets a readable name,
or the first of `name_`, `name_2`, ... that no spec name of the layer takes (`language.naming.fresh_name`):

- the parameters of `setup_context(ctx, inputs, output)` and `apply(cls, ...)`;
- the gradients of the derived backward: `grad_<value>` for each input, member and step of the tape (the
  language refuses spec names starting with `grad_` in `@function` layers, so these are the backward's
  alone); the incoming ones `grad_out`, `grad_out1`, ... (`autodiff.plan.incoming_names`); those of
  returned intermediates, `grad_<value>_out`, and their parts, `grad_<leaf>_from_<value>`;
- the tape's steps (`autodiff.tape.Linearizer.fresh`), named after the operation or the local they bind;
- the fields kept on `ctx`: an argument, `let` or dim as `ctx.<name>`, a shape as `ctx.<input>_shape`,
  each named around the attributes `ctx` has itself (`tables.FUNCTION_CTX_ATTRIBUTES`) and each other.

A module's methods add few names, each out of the spec's reach: `factory_kwargs` in `__init__` (refused as
a spec name), `bound` in `reset_parameters` (which reads only `self.` attributes), the temporaries of
optional members `h`, `h1`, ... (`codegen.optional_members`, around the layer's names) and `_out0`, ...
(the language refuses names starting with `_`).

What cannot be chosen around (`self`, `ctx`, the imports, the builtins the code uses, `nn.Module`'s
attributes for members) the language refuses: `tables.FORBIDDEN`, docs/language.md "Names".
"""

from __future__ import annotations

from layerdsl.language.naming import fresh_name
from layerdsl.language.tables import FORBIDDEN, FUNCTION_CTX_ATTRIBUTES


class FunctionNames:
    """One generated Function's own names. `taken`: every name of the layer's spec and tape in the
    Function's scope (inputs, members, arguments, lets, dims, locals, steps, gradients)."""

    def __init__(self, taken: set[str], ctx_names: list[str]):
        self.taken = set(taken) | FORBIDDEN
        self.inputs = self.local("inputs")
        self.output = self.local("output")
        self.cls = self.local("cls")
        self._fields: dict[tuple[str, str], str] = {}
        self._field_names: set[str] = set(FUNCTION_CTX_ATTRIBUTES)
        for name in ctx_names:  # the spec's names first: they keep their own where they can
            self.ctx_value(name)

    def local(self, hint: str) -> str:
        """A new local of the Function's methods."""
        name = fresh_name(hint, self.taken)
        self.taken.add(name)
        return name

    def ctx_value(self, name: str) -> str:
        """`ctx.<field>` keeping the argument, `let`, dim or `training` called `name`."""
        return "ctx." + self._field(("value", name), name)

    def ctx_shape(self, leaf: str) -> str:
        """`ctx.<field>` keeping the shape of the input or member `leaf`."""
        return "ctx." + self._field(("shape", leaf), f"{leaf}_shape")

    def _field(self, key: tuple[str, str], hint: str) -> str:
        if key not in self._fields:
            self._fields[key] = fresh_name(hint, self._field_names)
            self._field_names.add(self._fields[key])
        return self._fields[key]
