"""multipart/form-data bodies into parts, with python-multipart's push parser (the body is already bounded)."""
from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .config import MAX_NAME
from .errors import RequestError, TooLarge, one_line


@dataclass
class Part:
    """One part of a multipart body."""

    name: str
    filename: str | None
    data: bytes

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"form field {self.name!r} is not UTF-8 text") from None


class _Collector:
    """python-multipart callbacks gathering parts (in memory: the body is already bounded)."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts, self.parts, self.ended = max_parts, [], False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._data: list[bytes] = []
        self._current: Part | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_part_data": self.part_data, "on_part_end": self.part_end,
                "on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
                "on_end": self.end}

    def part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise TooLarge(f"more than {self.max_parts} form fields; send fewer images or fields")
        self._headers, self._data, self._current = {}, [], None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise RequestError("malformed multipart body: a part has no Content-Disposition header")
        _, options = parse_options_header(disposition.decode("latin-1"))
        if b"name" not in options:
            raise RequestError("malformed multipart body: a part's Content-Disposition has no name")
        try:
            name = options[b"name"].decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("malformed multipart body: a field name is not UTF-8") from None
        filename = options.get(b"filename")
        shown = filename.decode("utf-8", errors="replace").rpartition("/")[2][:MAX_NAME] if filename else None
        self._current = Part(name, shown or None, b"")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def part_end(self) -> None:
        if self._current is None:
            raise RequestError("malformed multipart body: a part ends before its headers")
        self._current.data = b"".join(self._data)
        self.parts.append(self._current)
        self._current, self._data = None, []

    def end(self) -> None:
        self.ended = True


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """The parts of a multipart/form-data body; RequestError when it is malformed or incomplete."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError("malformed multipart body: the Content-Type header has no boundary")
    collector = _Collector(max_parts)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        raise RequestError(f"malformed multipart body ({one_line(e)[:120]})") from None
    if not collector.ended:
        raise RequestError("malformed multipart body: it ends before its closing boundary")
    return collector.parts

