"""`layerdsl fmt`: the canonical layout, comments kept in place, idempotence, meaning preservation, the CLI."""

from __future__ import annotations

import random
import shutil
import textwrap
from pathlib import Path

import pytest

from layerdsl.diagnostics import SpecError
from layerdsl.driver.cli import main
from layerdsl.tools.fmt.formatter import LIMIT, format_source, parse_with_comments, source_tokens

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.layer"))
CORPUS = sorted((ROOT / "tests" / "error_corpus").glob("*.layer"))


def fmt(text: str) -> str:
    return format_source(textwrap.dedent(text))


def same(text: str) -> str:
    """Formats `text` and checks that it was already canonical."""
    text = textwrap.dedent(text)
    assert format_source(text) == text
    return text


# ---------------------------------------------------------------- layout


def test_several_examples_and_lists_of_values_keep_their_lines():
    ugly = (
        "layer A(n: int, bias: bool = true) {\n"
        "  example(n=[3,8])\n"
        "      example( n = 4,bias=false,x=[ normal(0,1),uniform(0,1) ] )\n"
        "  forward(x: [B, n]) -> [B, n] { return x }\n"
        "}\n"
    )
    assert format_source(ugly) == textwrap.dedent("""\
        layer A(n: int, bias: bool = true) {
            example(n = [3, 8])
            example(n = 4, bias = false, x = [normal(0, 1), uniform(0, 1)])

            forward(x: [B, n]) -> [B, n] {
                return x
            }
        }
        """)


def test_canonical_spacing_and_indentation():
    ugly = (
        "layer  Ugly( n:int,eps :float=1e-5 ){\n"
        '  """Doc   kept   as written."""\n'
        "  buffer steps:long[]=zeros\n"
        "  param w:[ n,2*n ]=normal( 0,0.02 )\n"
        "  example( n=2 )\n"
        "  forward( x:[...,n],m:bool[ B,n ] )->[...,2*n]{\n"
        "   y=x@w*-1+x[...,:n//2]-x[:,0]+x[1:n]\n"
        "   z=softmax( y,dim=-1 )**2\n"
        "   if not training and n>1{ return z }\n"
        "   else{ return -(z) }\n"
        "  }\n"
        "}"
    )
    assert format_source(ugly) == textwrap.dedent('''\
        layer Ugly(n: int, eps: float = 1e-5) {
            """Doc   kept   as written."""
            buffer steps: long[] = zeros
            param w: [n, 2 * n] = normal(0, 0.02)

            example(n = 2)

            forward(x: [..., n], m: bool[B, n]) -> [..., 2 * n] {
                y = x @ w * -1 + x[..., : n // 2] - x[:, 0] + x[1:n]
                z = softmax(y, dim = -1) ** 2
                if not training and n > 1 {
                    return z
                } else {
                    return -(z)
                }
            }
        }
        ''')


def test_blank_lines_between_member_groups_and_layers():
    text = (
        "layer A(n: int) {\n    param w: [n]\n    param b: [n]\n    let h = n // 2\n    sub f = nn.ReLU()\n"
        "    example(n = 2)\n    forward(x) {\n        return x\n    }\n}\n\n\n\nlayer B() {\n    forward(x) {\n        return x\n    }\n}\n"
    )
    assert format_source(text) == textwrap.dedent("""\
        layer A(n: int) {
            param w: [n]
            param b: [n]

            let h = n // 2
            sub f = nn.ReLU()

            example(n = 2)

            forward(x) {
                return x
            }
        }

        layer B() {
            forward(x) {
                return x
            }
        }
        """)


def test_a_blank_line_inside_a_group_or_a_block_is_kept_once():
    same("""\
        layer A(n: int) {
            param w: [n]

            param b: [n]

            example(n = 2)

            forward(x) {
                y = x

                return y
            }
        }
        """)
    squeezed = fmt("""\
        layer A() {
            forward(x) {

                y = x



                return y

            }
        }
        """)
    assert "    forward(x) {\n        y = x\n\n        return y\n    }\n" in squeezed


def test_long_lists_are_wrapped_one_item_per_line_with_a_trailing_comma():
    text = fmt("""\
        layer Wide(in_features: int, out_features: int, hidden_features: int, bias: bool = true, eps: float = 1e-5) {
            param weight: [in_features, out_features] = kaiming_uniform(a = sqrt(5), mode = "fan_in", nonlinearity = "relu")
            example(in_features = 2, out_features = 3, hidden_features = 4)
            forward(x: [batch_size, sequence_length, in_features]) -> [batch_size, sequence_length, out_features] {
                return x @ weight
            }
        }
        """)
    assert text == textwrap.dedent("""\
        layer Wide(
            in_features: int,
            out_features: int,
            hidden_features: int,
            bias: bool = true,
            eps: float = 1e-5,
        ) {
            param weight: [in_features, out_features] = kaiming_uniform(
                a = sqrt(5),
                mode = "fan_in",
                nonlinearity = "relu",
            )

            example(in_features = 2, out_features = 3, hidden_features = 4)

            forward(
                x: [batch_size, sequence_length, in_features]
            ) -> [batch_size, sequence_length, out_features] {
                return x @ weight
            }
        }
        """)
    assert all(len(line) <= LIMIT for line in text.splitlines())


def test_short_wrapped_lists_are_joined_and_a_lone_item_takes_no_comma():
    assert fmt("""\
        layer J(n: int) {
            sub f = nn.Sequential(
                nn.ReLU(),
                nn.Identity(),
            )
            example(n = 1)
            forward(x) {
                return x
            }
        }
        """).splitlines()[1] == "    sub f = nn.Sequential(nn.ReLU(), nn.Identity())"
    long_string = '"' + "why " * 30 + '"'
    text = fmt(f"@function\n@surrogate({long_string})\nlayer S() {{\n    forward(x) {{\n        return x\n    }}\n}}\n")
    assert f"@surrogate(\n    {long_string}\n)\n" in text


def test_docstrings_are_kept_as_written():
    same('''\
        layer D() {
            """First line.

              Indented   as the author   wanted.
            """
            forward(x) {
                return x
            }
        }
        ''')


# ---------------------------------------------------------------- comments


def test_whole_line_comments_between_members_stay_in_place():
    same("""\
        # A header comment.

        # Another paragraph about the layer.
        layer C(n: int) {
            # the weight
            param w: [n]
            # the bias, right below
            param b: [n]

            # values for the checks
            example(n = 3)

            # the computation
            forward(x) {
                return x * w + b
            }
            # after the last member
        }
        """)


def test_end_of_line_comments_after_braces_and_statements():
    text = fmt("""\
        @function # a decorator comment
        layer E(n: int) {   # after the layer's brace
            param w: [n]  # after a member
            example(n = 2)
            forward(x: [B, n]) -> [B, n] {  # after forward's brace
                y = x * w    # after a statement
                if training { # after if's brace
                    y = -y
                }  # after the if's close
                else {
                    y = y
                }
                return y  # after return
            }  # after forward's close

            backward(g) {
                grad x = g * w
                grad w = none
            }
        }  # after the layer
        """)
    assert text == textwrap.dedent("""\
        @function  # a decorator comment
        layer E(n: int) {  # after the layer's brace
            param w: [n]  # after a member

            example(n = 2)

            forward(x: [B, n]) -> [B, n] {  # after forward's brace
                y = x * w  # after a statement
                if training {  # after if's brace
                    y = -y
                }  # after the if's close
                else {
                    y = y
                }
                return y  # after return
            }  # after forward's close

            backward(g) {
                grad x = g * w
                grad w = none
            }
        }  # after the layer
        """)


def test_comments_inside_lists_wrap_them():
    text = fmt("""\
        layer L(a: int, # the first
                b: int) {
            sub f = nn.Sequential(nn.Linear(a, b), # project
                # then squash
                nn.Tanh())
            example(a = 1, b = 2)
            forward(x) {
                return mean(x, # over everything
                )
            }
        }
        """)
    assert text == textwrap.dedent("""\
        layer L(
            a: int,  # the first
            b: int,
        ) {
            sub f = nn.Sequential(
                nn.Linear(a, b),  # project
                # then squash
                nn.Tanh(),
            )

            example(a = 1, b = 2)

            forward(x) {
                return mean(
                    x  # over everything
                )
            }
        }
        """)


def test_comments_before_a_closing_bracket_or_brace_and_before_else():
    same("""\
        layer K(n: int) {
            example(
                n = 2
                # n is small on purpose
            )

            forward(x) {
                if n > 1 {
                    y = x
                    # the end of the then-branch
                }
                # before else
                else {
                    y = -x
                }
                return y
                # the end of forward
            }
        }
        """)


def test_comments_at_the_end_of_the_file():
    text = fmt("""\
        layer F() {
            forward(x) {
                return x
            }
        }
        # trailing


        # and another, after blank lines
        """)
    assert text.endswith("}\n# trailing\n\n# and another, after blank lines\n")
    assert format_source("# only a comment") == "# only a comment\n"
    assert format_source("") == ""
    assert format_source("\n\n") == ""


def test_windows_line_endings_are_normalised():
    text = "layer W() {\r\n    forward(x) {  # c\r\n        return x\r\n    }\r\n}\r\n"
    assert format_source(text) == text.replace("\r\n", "\n")


def _with_random_comments(text: str, rng: random.Random) -> str:
    """Comments (and line breaks) inserted at random places inside brackets and at line ends."""
    tree, _ = parse_with_comments(text)
    out, pos, depth, n = [], 0, 0, 0
    for tok in source_tokens(tree):
        out.append(text[pos : tok.end_pos])
        pos = tok.end_pos
        depth += tok.type in ("LPAR", "LSQB")
        depth -= tok.type in ("RPAR", "RSQB")
        r = rng.random()
        if depth > 0 and r < 0.15:
            n += 1
            out.append(f"  # c{n}\n")
        elif depth > 0 and r < 0.25:
            n += 1
            out.append(f"\n# w{n}\n")
        elif depth > 0 and r < 0.3:
            out.append("\n   ")
    out.append(text[pos:])
    lines = []
    for line in "".join(out).split("\n"):
        if rng.random() < 0.1:
            n += 1
            lines.append(f"  # line{n}")
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("seed", range(60))
def test_random_comments_survive_in_order_and_formatting_is_idempotent(seed):
    rng = random.Random(seed)
    text = _with_random_comments(rng.choice(SPECS).read_text(encoding="utf-8"), rng)
    once = format_source(text)  # checks internally: same tree, same comments in the same order
    assert [c.text for c in parse_with_comments(once)[1]] == [c.text for c in parse_with_comments(text)[1]]
    assert format_source(once) == once


# ---------------------------------------------------------------- every spec: idempotent, same Python


@pytest.mark.parametrize("spec", SPECS + CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_idempotent_on_every_spec(spec: Path):
    text = spec.read_text(encoding="utf-8")
    try:
        once = format_source(text)
    except SpecError:
        assert spec.parent.name == "error_corpus"  # a syntax-error case of the corpus: nothing to format
        return
    assert format_source(once) == once


def _generated(paths: list[Path]) -> dict:
    from layerdsl.driver.pipeline import generate

    return {path: text.split("\n", 1)[1] for path, text in generate([str(p) for p in paths]).items()}


def test_formatting_preserves_the_generated_python(tmp_path: Path):
    """The Python generated from every spec is the same, header aside, before and after formatting."""
    original, formatted = tmp_path / "original" / "specs", tmp_path / "formatted" / "specs"
    shutil.copytree(ROOT / "specs", original)
    shutil.copytree(ROOT / "specs", formatted)
    changed = 0
    for spec in formatted.rglob("*.layer"):
        # The shipped specs are already canonical: undo indentation and blank lines first (neither
        # carries meaning; the shipped docstrings are one line each).
        lines = spec.read_text(encoding="utf-8").splitlines()
        text = "\n".join(line.strip() for line in lines if line.strip()) + "\n"
        spec.write_text(format_source(text), encoding="utf-8")
        changed += format_source(text) != text
    assert changed  # the comparison does exercise the formatter
    try:
        pairs = [([original], [formatted])]
        _generated([original])
    except Exception:  # some spec does not generate right now: compare those that do, one by one
        pairs = [([original / p.name], [formatted / p.name]) for p in sorted(original.glob("*.layer"))]
    compared = 0
    for before_paths, after_paths in pairs:
        try:
            before = _generated(before_paths)
        except Exception:
            continue
        after = _generated(after_paths)
        assert after.keys() == before.keys()
        for path in before:
            assert after[path] == before[path], f"{path} differs after formatting"
            compared += 1
    assert compared


# ---------------------------------------------------------------- the command


UGLY = "layer U(n:int){\n  param w:[n]=zeros\n  example(n=2)\n  forward(x){return x*w}\n}\n"


def test_fmt_check_and_diff_exit_codes(tmp_path: Path, capsys):
    good = tmp_path / "good.layer"
    good.write_text(format_source(UGLY), encoding="utf-8")
    ugly = tmp_path / "ugly.layer"
    ugly.write_text(UGLY, encoding="utf-8")

    assert main(["fmt", str(good), "--check"]) == 0
    assert main(["fmt", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"would reformat {ugly}" in err and str(good) not in err.replace("unchanged", "")

    assert main(["fmt", str(ugly), "--diff"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- {ugly}\n+++ {ugly} (formatted)\n")
    assert "-  param w:[n]=zeros\n" in out and "+    param w: [n] = zeros\n" in out
    assert main(["fmt", str(ugly), "--diff", "--check"]) == 1
    assert ugly.read_text(encoding="utf-8") == UGLY  # --check and --diff write nothing


def test_fmt_rewrites_files_in_place(tmp_path: Path, capsys):
    ugly = tmp_path / "ugly.layer"
    ugly.write_text(UGLY, encoding="utf-8")
    assert main(["fmt", str(tmp_path)]) == 0
    assert ugly.read_text(encoding="utf-8") == format_source(UGLY)
    assert "1 file reformatted" in capsys.readouterr().err
    assert main(["fmt", str(ugly), "--check"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ugly.layer"]  # no temporary files left behind


def test_fmt_keeps_the_files_mode(tmp_path: Path):
    ugly = tmp_path / "ugly.layer"
    ugly.write_text(UGLY, encoding="utf-8")
    ugly.chmod(0o640)
    assert main(["fmt", str(ugly)]) == 0
    assert ugly.read_text(encoding="utf-8") == format_source(UGLY)
    assert ugly.stat().st_mode & 0o7777 == 0o640


def test_fmt_reports_a_syntax_error_and_leaves_the_file_untouched(tmp_path: Path, capsys):
    broken = tmp_path / "broken.layer"
    source = "layer B(n: int) {\n    param w: [n] = \n}\n"
    broken.write_bytes(source.encode())
    ugly = tmp_path / "ugly.layer"
    ugly.write_text(UGLY, encoding="utf-8")
    assert main(["fmt", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{broken}:2:20: error: unexpected end of line" in err
    assert "param w: [n] = " in err  # the offending line is shown, as for every diagnostic
    assert broken.read_bytes() == source.encode()
    assert ugly.read_text(encoding="utf-8") == format_source(UGLY)  # the other file was still formatted
    with pytest.raises(SpecError):
        format_source(source)


def test_fmt_on_a_missing_path_is_a_usage_error(tmp_path: Path, capsys):
    assert main(["fmt", str(tmp_path / "nope.layer")]) == 2
