"""A minimal TOML writer (Python 3.11 only reads TOML): strings, numbers, bools, lists, tables,
arrays of tables."""
from __future__ import annotations


def _val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        r = repr(round(v, 6))
        return r if ("." in r or "e" in r or "inf" in r or "nan" in r) else r + ".0"
    if isinstance(v, str):
        if "\n" in v:
            return '"""\n' + v.replace("\\", "\\\\").replace('"""', '\\"""') + '"""'
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_val(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _val(k)


def _is_table(v) -> bool:
    return isinstance(v, dict) and not getattr(v, "inline", False)


class Inline(dict):
    inline = True


def dumps(d: dict, prefix: str = "") -> str:
    lines = []
    for k, v in d.items():
        if not _is_table(v) and not (isinstance(v, list) and v and all(_is_table(x) for x in v)):
            lines.append(f"{_key(k)} = {_val(v)}")
    for k, v in d.items():
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if _is_table(v):
            lines.append("")
            lines.append(f"[{name}]")
            body = dumps(v, name)
            if body:
                lines.append(body)
        elif isinstance(v, list) and v and all(_is_table(x) for x in v):
            for item in v:
                lines.append("")
                lines.append(f"[[{name}]]")
                lines.append(dumps(item, name))
    return "\n".join(x for x in lines if x is not None).strip("\n") + "\n" if not prefix else "\n".join(lines).strip("\n")
