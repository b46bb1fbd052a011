"""The runtime's HTTP contract: request and response models, and the error envelope every error
status answers with, `{"error": {"code", "message"}}`, documented per endpoint in the OpenAPI
spec (it replaces FastAPI's default 422 `{"detail"}` schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def unicode_text(value: str) -> str:
    """`value` when it is valid Unicode: JSON can escape a lone surrogate (`\\ud800`), which no
    tokenizer or UTF-8 encoder accepts (it failed a whole /route batch with a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"a lone surrogate {value[exc.start]!r} at character {exc.start} is not "
                         "text (send valid UTF-8)") from None
    return value


Text = Annotated[str, AfterValidator(unicode_text)]


# -- requests -----------------------------------------------------------------------------------
class PromptIn(BaseModel):
    prompt: Text = Field(..., description="The user's prompt (at most serve's max_prompt_chars characters).")


REQUEST_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # what X-Request-ID accepts from a client
AGENT_ID = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]  # amo.validate.AGENT_ID_PATTERN


class FeedbackIn(BaseModel):
    """A verdict on a logged decision (strict: no coercion, no unknown fields)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    request_id: str = Field(..., pattern=REQUEST_ID_PATTERN, description="The decision's id (its answer's "
                            "`request_id`, also in X-Request-ID).")
    outcome: Literal["ok", "wrong", "partial"] = Field(..., description="ok: the served selection was right; "
                                                       "wrong: it was not (`agents`: the right ones, `[]`: "
                                                       "out of scope); partial: some were right (`agents` required).")
    agents: list[AGENT_ID] | None = Field(None, max_length=32, description="The agents that should have been "
                                          "selected, the main one first (not with ok).")
    path: list[AGENT_ID] | None = Field(None, max_length=32, description="The agents actually called, in "
                                        "order (a trace).")


class FeedbackOut(BaseModel):
    request_id: str
    outcome: str
    time: str = Field(..., description="When the feedback was logged (UTC).")


class InvokeIn(BaseModel):
    input: Text = Field(..., description="Text for the arm (or the base model).")
    arm: Text | None = Field(None, description="Arm name; null: the base model.")
    max_new_tokens: int | None = Field(None, ge=1, description="At most serve.max_new_tokens (more: 422 "
                                       "max_new_tokens_too_large); null: the arm's own limit.")


# -- responses ----------------------------------------------------------------------------------
class AgentScore(BaseModel):
    id: str
    score: float


class RouteBody(BaseModel):
    agents: list[AgentScore] = Field(..., description="Selected agents, best first; empty when it abstains.")
    separator: float = Field(..., description="The out-of-scope score agents must beat.")
    abstained: bool


class RouteOut(BaseModel):
    request_id: str = Field(..., description="The decision's id in the decision log (POST /feedback names it).")
    bundle_id: str
    route: RouteBody


class PlanBody(BaseModel):
    path: list[str] = Field(..., description="Agents to call, in order; empty when it abstains.")
    abstained: bool
    rules: list[list[str]] = Field(..., description="Per step, the decision tests that led to it.")
    choice: list[str] = Field(..., description="The tests that picked this path among candidates.")


class PlanOut(BaseModel):
    request_id: str
    bundle_id: str
    route: RouteBody
    plan: PlanBody


class InvokeOut(BaseModel):
    bundle_id: str
    arm: str | None = Field(..., description="null: the base model answered.")
    output: str


class CopilotPlan(BaseModel):
    path: list[str]
    abstained: bool


class ArmOutput(BaseModel):
    agent: str
    arm: str
    output: str


class Call(BaseModel):
    agent: str
    arm: str | None = Field(..., description="null: the agent has no arm; the caller's framework runs it.")
    output: str | None


class CopilotOut(BaseModel):
    request_id: str
    bundle_id: str
    prompt: str
    route: RouteBody
    out_of_scope: bool
    plan: CopilotPlan
    calls: list[Call] = Field(..., description="Every planned step in order.")
    arm_outputs: list[ArmOutput] = Field(..., description="The steps an arm answered.")


class Refusal(BaseModel):
    bundle_id: str | None
    error: str
    time: str


class HealthOut(BaseModel):
    status: Literal["ok", "no_bundle"]
    bundle_id: str | None
    loaded_at: str | None
    refused: Refusal | None = Field(..., description="The last bundle that failed to load, and why.")
    challenger: str | None = Field(None, description="The bundle scored in shadow (registry challenger.json).")
    arms: Literal["lazy", "eager", "off"] = Field(..., description="serve.arms: when arms load.")
    arms_loaded: bool
    registry: str
    route_batches: int
    routed: int
    generation_admitted: int = Field(..., description="/invoke and /copilot requests running or waiting.")


class ReadyOut(BaseModel):
    status: Literal["ready"]
    bundle_id: str


class BundleOut(BaseModel):
    """The served bundle's manifest.json, whole (every key below, and the rest as written)."""

    model_config = ConfigDict(extra="allow")
    bundle_id: str
    metrics: dict[str, Any]
    models: dict[str, Any]
    files: dict[str, str] = Field(..., description="sha256 of every file but the manifest.")
    digest: str = Field(..., description="sha256 of the manifest without this key.")


# -- errors -------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(..., description="Stable, machine-readable: see each status's description.")
    message: str = Field(..., description="For people: names the field, limit or setting.")
    request_id: str | None = Field(None, description="On a 500 only: quote it to find the logged traceback.")


class ErrorOut(BaseModel):
    error: ErrorDetail


ERRORS: dict[int, str] = {
    400: "`invalid_json`: the body is not valid JSON.",
    404: "`unknown_request_id`: /feedback names a request id the decision log does not hold.",
    413: "`body_too_large`: the body is larger than serve.max_body_bytes.",
    422: "`invalid_request`: a field is missing, mistyped or not text (the message names it); "
         "`empty_prompt`/`empty_input`, `prompt_too_long`/`input_too_long` (max_prompt_chars); "
         "on /invoke also `unknown_arm` and `max_new_tokens_too_large` (serve.max_new_tokens); on "
         "/feedback `unknown_agent` (not one of the served bundle's agents), `agents_required` "
         "(partial without agents) and `agents_with_ok`.",
    429: "`generation_busy`: serve.generation_queue /invoke and /copilot requests are already "
         "admitted; retry after the Retry-After header's seconds.",
    500: "`internal`: an unexpected failure; the message holds only a request id (also in "
         "X-Request-ID), under which the traceback is logged.",
    501: "`extra_not_installed`: generation needs the `arms` extra (torch), which this runtime was "
         "installed without; the message names the command that installs it (pip install 'amo[arms]').",
    503: "`no_bundle` (`not_ready` on /readyz): no verified bundle is served yet, or only a refused "
         "one; on /invoke and /copilot also `arm_refused` (an arm failed its checksums), "
         "`arms_off` (serve.arms is off) and `generation_failed` (the generation process died; it "
         "was restarted: retry); `decision_log_failed` (the decision could not be logged, so it is "
         "not answered) and, on /feedback, `decision_log_off` (serve.decision_log is off).",
    504: "`timeout`: the generation took longer than serve.request_timeout_seconds.",
}
HEADERS: dict[int, dict[str, Any]] = {
    429: {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    500: {"X-Request-ID": {"description": "The request id the traceback is logged under.",
                           "schema": {"type": "string"}}},
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an endpoint that can answer these error statuses, each in the envelope."""
    return {status: {"model": ErrorOut, "description": ERRORS[status],
                     **({"headers": HEADERS[status]} if status in HEADERS else {})} for status in statuses}
