"""`param.show` output, laid out byte for byte as varnishd 7.1's (mgt_param.c): the one-line form,
the long form (`-l`, or one parameter) with its text wrapped at 72 columns, and the `-j` items."""

from __future__ import annotations

import json

from cacheserver.params import ParamDef, Params

MARGIN = 8        # the long form's indent
WRAP_AT = 72      # a line is broken before a word that would reach this column
TAB0 = 3          # a table row ("\tname\ttext") starts this far in from the margin
NAME_WIDTH = 30   # the one-line form: longest name (backend_remote_error_holddown) + 1

# The notes the long form adds for each flag, in the order varnishd prints them.
FLAG_NOTES = (
    ("obj_sticky", "NB: This parameter is evaluated only when objects are created. "
                   "To change it for all objects, restart or ban everything."),
    ("delayed_effect", "NB: This parameter may take quite some time to take (full) effect."),
    ("experimental", "NB: We do not know yet if it is a good idea to change this parameter, or if the "
                     "default value is even sensible. Caution is advised, and feedback is most welcome."),
    ("must_reload", "NB: This parameter will not take any effect until the VCL programs have been "
                    "reloaded."),
    ("must_restart", "NB: This parameter will not take any effect until the child process has been "
                     "restarted."),
    ("wizard", "NB: Do not change this parameter, unless a developer tell you to do so."),
    ("protected", "NB: This parameter is protected and can not be changed."),
    ("only_root", "NB: This parameter only works if varnishd is run as root."),
    ("build_options", "NB: The actual default value for this parameter depends on the Varnish build "
                      "environment and options."),
)
NOT_AVAILABLE = "NB: This parameter depends on a feature which is not available on this platform."


def _wrap_line(line: str, tabs: int, margin: int) -> str:
    """One line of text from `margin`: words flow until WRAP_AT; up to two tabs make a table row."""
    out = [" " * margin]
    n = margin
    had_tabs = 0
    i = 0
    while i < len(line):
        c = line[i]
        if not c.isspace():
            out.append(c)
            n += 1
            i += 1
        elif c == "\t":
            while True:
                out.append(" ")
                n += 1
                if n % tabs == (margin + TAB0) % tabs:
                    break
            had_tabs += 1
            i += 1
        else:
            w = i + 1
            while w < len(line) and not line[w].isspace():
                w += 1
            if n + (w - i) < WRAP_AT:
                out.append(line[i:w])
                n += w - i
                i = w
            else:
                out.append("\n")
                out.append(_wrap_line(line[i + 1:], 0, margin + TAB0 + tabs if had_tabs else margin))
                break
    return "".join(out)


def wrap(text: str) -> str:
    """A parameter's description as the long form shows it."""
    tabs = 0
    if "\t" in text:
        rows = [ln[1:] for ln in text.split("\n")[1:] if ln.startswith("\t")]
        tabs = max(max((r.index("\t") for r in rows if "\t" in r), default=0) + 2, 20)
    out = []
    for piece in text.split("\n"):
        if piece:
            out.append(_wrap_line(piece, tabs, MARGIN))
        out.append("\n")
    return "".join(out[:-1])


def flags(params: Params, d: ParamDef, protected: bool) -> tuple[str, ...]:
    return d.flags + (("protected",) if protected else ())


def value_text(params: Params, d: ParamDef) -> str:
    """"VALUE [units] (default)" as both forms show it."""
    text = params.text(d.name)
    if d.units:
        text += f" [{d.units}]"
    if params.is_default(d.name):
        text += " (default)"
    return text


def short(params: Params, d: ParamDef) -> str:
    if d.kind == "na":
        return f"{d.name:<{NAME_WIDTH}}-\n"
    return f"{d.name:<{NAME_WIDTH}}{value_text(params, d)}\n"


def long(params: Params, d: ParamDef, protected: bool = False) -> str:
    pad = " " * MARGIN
    if d.kind == "na":
        return f"{d.name}\n{pad}Not available\n\n" + wrap("\n\n" + NOT_AVAILABLE) + "\n\n"
    out = [f"{d.name}\n{pad}Value is: {value_text(params, d)}\n"]
    if not params.is_default(d.name):
        out.append(f"{pad}Default is: {d.default}\n")
    _, _, low, high = params.limits(d)
    if low is not None:
        out.append(f"{pad}Minimum is: {low}\n")
    if high is not None:
        out.append(f"{pad}Maximum is: {high}\n")
    out.append("\n")
    out.append(wrap(d.doc))
    have = flags(params, d, protected)
    for flag, note in FLAG_NOTES:
        if flag in have:
            out.append(wrap("\n\n" + note))
    out.append("\n\n")
    return "".join(out)


def _json_value(params: Params, d: ParamDef) -> str:
    value = params.get(d.name)
    if d.kind == "duration":
        return params.format(d, value)          # a number with three decimals, unquoted
    if d.kind == "real":
        return f"{value:g}"
    if d.kind in ("uint", "bytes"):
        return str(int(value))  # type: ignore[call-overload]
    if d.kind == "bool":
        return "true" if value else "false"
    if d.kind == "pool":
        low, high, age = value  # type: ignore[misc]
        return ('{\n        "min_pool": %d,\n        "max_pool": %d,\n        "max_age": %s\n    }'
                % (low, high, f"{age:g}"))
    return json.dumps(params.text(d.name), ensure_ascii=False)


def json_item(params: Params, d: ParamDef, protected: bool = False) -> str:
    """One parameter of `param.show -j` / `param.set -j`, indented as varnishd's."""
    if d.kind == "na":
        return f'  {{\n    "name": "{d.name}",\n    "implemented": false\n  }}'
    rows = [f'"name": "{d.name}"', '"implemented": true', f'"value": {_json_value(params, d)}']
    if d.units:
        rows.append(f'"units": "{d.units}"')
    rows.append(f'"default": {json.dumps(d.default, ensure_ascii=False)}')
    _, _, low, high = params.limits(d)
    if low is not None:
        rows.append(f'"minimum": "{low}"')
    if high is not None:
        rows.append(f'"maximum": "{high}"')
    rows.append(f'"description": {json.dumps(d.doc, ensure_ascii=False)}')
    have = flags(params, d, protected)
    if have:
        rows.append('"flags": [\n' + ",\n".join(f'      "{f}"' for f in have) + "\n    ]")
    else:
        rows.append('"flags": []')
    return "  {\n" + ",\n".join("    " + r for r in rows) + "\n  }"
