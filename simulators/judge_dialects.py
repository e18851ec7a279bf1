"""The two wire dialects the local judge endpoint speaks — OpenAI chat completions and Anthropic
messages: reading a judge request out of either, writing an answer, an error or a model list the way
the real API does (so the official clients parse it as they would the real thing)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPENAI_CHAT_ROUTE = "/v1/chat/completions"
ANTHROPIC_MESSAGES_ROUTE = "/v1/messages"


class BadRequest(Exception):
    def __init__(self, message: str, model: str = "") -> None:
        super().__init__(message)
        self.model = model


@dataclass(slots=True)
class JudgeRequest:
    model: str
    system: str
    user: str  # the text of the last user message: where the data sections are
    chars: int  # all request text, for the usage estimate
    tool: str | None  # the tool to answer with, if any


@dataclass(slots=True)
class Answer:
    text: str | None = None  # plain message content
    tool_input: dict[str, Any] | None = None  # verdict-like object for a tool call


def text_of(content: Any) -> str:
    """Text of a message content: a string or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif "content" in part:  # anthropic tool_result
                    parts.append(text_of(part["content"]))
        return "\n".join(parts)
    return ""


def messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, Mapping) for m in msgs):
        msg = "messages: must be a non-empty array of message objects"
        raise BadRequest(msg, str(body.get("model", "")))
    return msgs


def model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        msg = "model: a model name is required"
        raise BadRequest(msg)
    if body.get("stream"):
        msg = "stream: streaming is not supported by the local endpoint"
        raise BadRequest(msg, model)
    return model


def ceil4(n: int) -> int:
    return -(-n // 4)


def bearer(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:]
    return None


class OpenAIDialect:
    route = OPENAI_CHAT_ROUTE
    request_id_header = "x-request-id"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return bearer(headers) or headers.get("api-key")

    def parse(self, body: Mapping[str, Any]) -> JudgeRequest:
        model = model_of(body)
        system, user, chars = [], "", 0
        for m in messages(body):
            text = text_of(m.get("content"))
            chars += len(text)
            if m.get("role") in ("system", "developer"):
                system.append(text)
            elif m.get("role") == "user":
                user = text
        return JudgeRequest(model, "\n".join(system), user, chars, self._tool(body))

    def _tool(self, body: Mapping[str, Any]) -> str | None:
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return None
        if isinstance(choice, Mapping):
            named = (choice.get("function") or {}).get("name")
            if isinstance(named, str):
                return named
        first = tools[0] if isinstance(tools[0], Mapping) else {}
        return str((first.get("function") or {}).get("name", "verdict"))

    def render(
        self,
        req: JudgeRequest,
        body: Mapping[str, Any],
        answer: Answer,
        seq: int,
        usage: tuple[int, int],
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
        }
        finish = "stop"
        if answer.tool_input is not None and req.tool:
            message["tool_calls"] = [
                {
                    "id": f"call_local_{seq}",
                    "type": "function",
                    "function": {"name": req.tool, "arguments": answer.text},
                }
            ]
            # a forced named function ends with "stop" on the real API too
            finish = "stop" if isinstance(body.get("tool_choice"), Mapping) else "tool_calls"
        else:
            message["content"] = answer.text
        return {
            "id": f"chatcmpl-local-{seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": usage[0] + usage[1],
            },
            "service_tier": "default",
            "system_fingerprint": "fp_judgeflow_local",
        }

    def error(self, status: int, message: str, seq: int) -> dict[str, Any]:
        kind, code = _OPENAI_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


class AnthropicDialect:
    route = ANTHROPIC_MESSAGES_ROUTE
    request_id_header = "request-id"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-api-key") or bearer(headers)

    def parse(self, body: Mapping[str, Any]) -> JudgeRequest:
        model = model_of(body)
        msgs = messages(body)
        if not isinstance(body.get("max_tokens"), int):
            msg = "max_tokens: Field required"
            raise BadRequest(msg, model)
        system = text_of(body.get("system", ""))
        user, chars = "", len(system)
        for m in msgs:
            text = text_of(m.get("content"))
            chars += len(text)
            if m.get("role") == "user":
                user = text
        return JudgeRequest(model, system, user, chars, self._tool(body))

    def _tool(self, body: Mapping[str, Any]) -> str | None:
        tools = body.get("tools")
        choice = body.get("tool_choice") or {}
        if not tools or (isinstance(choice, Mapping) and choice.get("type") == "none"):
            return None
        if isinstance(choice, Mapping) and isinstance(choice.get("name"), str):
            return str(choice["name"])
        first = tools[0] if isinstance(tools[0], Mapping) else {}
        return str(first.get("name", "verdict"))

    def render(
        self,
        req: JudgeRequest,
        body: Mapping[str, Any],
        answer: Answer,
        seq: int,
        usage: tuple[int, int],
    ) -> dict[str, Any]:
        if answer.tool_input is not None and req.tool:
            content: list[dict[str, Any]] = [
                {
                    "type": "tool_use",
                    "id": f"toolu_local_{seq}",
                    "name": req.tool,
                    "input": answer.tool_input,
                }
            ]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": answer.text or ""}]
            stop = "end_turn"
        return {
            "id": f"msg_local_{seq}",
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage[0],
                "output_tokens": usage[1],
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
        }

    def error(self, status: int, message: str, seq: int) -> dict[str, Any]:
        kind = ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_local_{seq}",
        }


ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

Dialect = OpenAIDialect | AnthropicDialect
OPENAI = OpenAIDialect()
ANTHROPIC = AnthropicDialect()


def error_message(status: int, model: str, key: str | None) -> str:
    if status == 401:
        shown = f"{key[:3]}...{key[-2:]}" if key and len(key) > 6 else "***"
        return f"simulated: incorrect API key provided: {shown}"
    if status == 404:
        return f"simulated: the model `{model}` does not exist or you do not have access to it"
    if status == 429:
        return f"simulated: rate limit reached for {model} on requests per min (RPM)"
    if status == 503:
        return "simulated: the server is overloaded or not ready yet"
    if status >= 500:
        return "simulated: the server had an error while processing your request"
    return f"simulated: request failed with status {status}"


def openai_models(models: tuple[str, ...]) -> dict[str, Any]:
    data = [
        {"id": m, "object": "model", "created": 1735689600, "owned_by": "judgeflow-local"} for m in models
    ]
    return {"object": "list", "data": data}


def anthropic_models(models: tuple[str, ...]) -> dict[str, Any]:
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": models[0] if models else None,
        "last_id": models[-1] if models else None,
    }


HTML_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center>"
    b"<h1>502 Bad Gateway</h1></center><hr><center>judgeflow local endpoint (simulated)"
    b"</center></body></html>\n"
)
PROSE = "The response looks acceptable to me and I would rate it as fine (simulated prose)."
