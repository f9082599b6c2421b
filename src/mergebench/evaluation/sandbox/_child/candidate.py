"""The candidate's process: run the generated program, then answer the driver's calls.

Nothing here is trusted. Once the program runs it owns this process and may rewrite any of this
code or write anything to the reply pipe; the driver treats every reply as untrusted data
(:mod:`.wire` decodes literals only) and the verdict is never decided here.
"""

from __future__ import annotations

from . import wire

_EXPORT_CAP = 64 << 10  # a global whose literal is larger than this is exported by reference


def serve(source: str, requests: int, replies: int) -> None:
    handles: list = []

    def reference(obj):
        handles.append(obj)
        return {wire.HANDLE: len(handles) - 1, "n": getattr(obj, "__name__", type(obj).__name__)[:80],
                "c": callable(obj)}

    def reply(message) -> None:
        wire.send(replies, wire.dumps(message))

    def failure(exc: BaseException) -> list:
        return ["raise", type(exc).__name__, _text(exc)]

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "<candidate>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - the program's own failure is the answer
        reply(["error", type(exc).__name__, _text(exc)])
        return
    exports = {}
    for name, value in list(namespace.items()):
        if name.startswith("__") or isinstance(value, type(wire)):
            continue
        try:
            literal = wire.encode(value)
            if len(wire.dumps(literal)) > _EXPORT_CAP:
                raise ValueError
            exports[name] = literal
        except (TypeError, ValueError, RecursionError):
            exports[name] = reference(value)
    reply(["ready", wire.encoded_dict(exports)])
    while True:
        try:
            request = wire.recv(requests)
        except EOFError:
            return

        def resolve(tag, obj):
            if tag != wire.REF or type(obj[wire.REF]) is not int or not 0 <= obj[wire.REF] < len(handles):
                raise wire.ProtocolError("unknown reference")
            return handles[obj[wire.REF]]

        try:
            _, target, args, kwargs = wire.decode(request, resolve)
            result = handles[target](*args, **kwargs)
            message = ["ok", wire.encode(result, reference)]
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which decides
            message = failure(exc)
        try:
            reply(message)
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. a result that nests too deeply
            reply(failure(exc))


def _text(exc: BaseException) -> str:
    try:
        return str(exc)[:1000]
    except BaseException:  # noqa: BLE001 - a __str__ that raises
        return "<unprintable>"
