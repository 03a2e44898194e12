"""Bad input on every endpoint: a precise 4xx in the one JSON error shape, and never a 500.

Nothing here needs a worker: the publish to RabbitMQ is an on_commit callback, and the test
transaction never commits.
"""

import json
import uuid

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from customers.models import Customer
from delivery.models import Message, Status
from tests.factories import template

WELCOME = {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana"}}
SOME_ID = "6f1c9a4e-0b7d-4c59-9a43-2f6f0d1f3b21"

# Every endpoint of the v1 API, with a body that would be valid for it.
ENDPOINTS = [
    ("post", "/v1/messages", WELCOME),
    ("get", "/v1/messages", None),
    ("post", "/v1/messages/batch", {"messages": [WELCOME]}),
    ("get", f"/v1/messages/{SOME_ID}", None),
    ("delete", f"/v1/messages/{SOME_ID}", None),
    ("get", "/v1/templates", None),
    ("post", "/v1/templates", {"slug": "invoice", "subject": "Invoice", "text": "Due"}),
    ("get", "/v1/templates/welcome", None),
    ("put", "/v1/templates/welcome", {"subject": "Hey", "text": "Hey"}),
    ("delete", "/v1/templates/welcome", None),
    ("post", "/v1/templates/welcome/preview", {"data": {"name": "Ana"}}),
]
BODY_ENDPOINTS = [(method, path) for method, path, body in ENDPOINTS if body is not None]


def endpoint_id(value):
    return value if isinstance(value, str) and value.startswith("/") else None


def assert_error(response, status: int, code: str) -> dict:
    """`response` is `status` in the JSON error shape with `code`; returns the error object."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["fields"], dict)
    return error


def call(client: APIClient, method: str, path: str, body=None, **extra):
    """A request with `body` sent as JSON (a str or bytes body is sent as it is)."""
    if body is None:
        return getattr(client, method)(path, **extra)
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return getattr(client, method)(path, data=data, content_type="application/json", **extra)


def send(client: APIClient, body, **extra):
    return call(client, "post", "/v1/messages", body, **extra)


def batch(client: APIClient, body, **extra):
    return call(client, "post", "/v1/messages/batch", body, **extra)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=endpoint_id)
def test_it_answers_401_missing_api_key_without_an_authorization_header(
    db, anon, method, path, body
):
    response = call(anon, method, path, body)

    assert_error(response, 401, "missing_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Message.objects.exists()


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=endpoint_id)
def test_it_answers_401_invalid_api_key_for_an_unknown_key(alice, method, path, body):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.key}x")

    assert_error(call(client, method, path, body), 401, "invalid_api_key")
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer nope", "Bearer mq_" + "a" * 200, "Bearer two words"]
)
def test_it_answers_401_invalid_api_key_for_a_malformed_bearer_header(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    assert_error(send(client, WELCOME), 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=endpoint_id)
def test_it_answers_401_revoked_api_key_for_a_revoked_key(alice, method, path, body):
    alice.customer.api_keys.get().revoke()

    assert_error(call(alice.client, method, path, body), 401, "revoked_api_key")
    assert not Message.objects.exists()


def test_it_still_accepts_the_customers_other_keys_after_one_is_revoked(alice):
    alice.customer.api_keys.get().revoke()
    _, other = alice.customer.issue_key("second")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other}")

    assert send(client, WELCOME).status_code == 202


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=endpoint_id)
def test_it_answers_403_customer_suspended_for_a_suspended_customer(alice, method, path, body):
    Customer.objects.filter(pk=alice.customer.pk).update(status=Customer.Status.SUSPENDED)

    assert_error(call(alice.client, method, path, body), 403, "customer_suspended")
    assert not Message.objects.exists()


# --- transport: body size, JSON, content type, method, URL -------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [(m, p) for m, p in BODY_ENDPOINTS if not p.endswith("/batch")]
)
def test_it_answers_413_for_a_body_over_the_limit(alice, method, path):
    pad = "x" * (settings.MAILQ_MAX_BODY_BYTES + 1)
    big = json.dumps({**WELCOME, "slug": "big", "subject": "Big", "text": pad, "data": {}})

    response = call(alice.client, method, path, big)

    error = assert_error(response, 413, "payload_too_large")
    assert str(settings.MAILQ_MAX_BODY_BYTES) in error["message"]
    assert not Message.objects.exists()
    assert not alice.customer.templates.filter(slug="big").exists()


def test_it_answers_413_before_authenticating(db, anon):
    big = json.dumps({**WELCOME, "data": {"pad": "x" * settings.MAILQ_MAX_BODY_BYTES}})

    assert_error(send(anon, big), 413, "payload_too_large")


def test_it_gives_the_batch_endpoint_its_own_larger_limit(alice):
    # Each item pads the body, so the whole batch is over the single-send limit but under its own.
    pad = "x" * 1000
    count = settings.MAILQ_MAX_BODY_BYTES // len(pad) + 10
    items = [{**WELCOME, "data": {"name": "Ana", "pad": pad}}] * count
    body = json.dumps({"messages": items})
    assert settings.MAILQ_MAX_BODY_BYTES < len(body) < settings.MAILQ_MAX_BATCH_BODY_BYTES

    response = batch(alice.client, body)

    assert response.status_code == 202, response.content[:500]
    assert Message.objects.count() == count


def test_it_answers_413_for_a_batch_body_over_the_batch_limit(alice):
    pad = "x" * (settings.MAILQ_MAX_BATCH_BODY_BYTES + 1)
    body = json.dumps({"messages": [{**WELCOME, "data": {"name": "Ana", "pad": pad}}]})

    assert_error(batch(alice.client, body), 413, "payload_too_large")
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        *[(method, path, '{"template": "welcome",') for method, path in BODY_ENDPOINTS],
        ("post", "/v1/messages", "{'template': 'welcome'}"),
        ("post", "/v1/messages", '{"template": "welcome"} trailing'),
        ("post", "/v1/messages", b'{"template": "\xff\xfe"}'),
        ("post", "/v1/messages", '{"data": {"n": NaN}}'),
        ("post", "/v1/messages", '{"data": {"n": -Infinity}}'),
    ],
)
def test_it_answers_400_malformed_json_for_a_body_that_is_not_json(alice, method, path, body):
    response = call(alice.client, method, path, body)

    error = assert_error(response, 400, "malformed_json")
    assert error["fields"] == {}
    assert not Message.objects.exists()


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
def test_it_answers_400_not_500_for_json_nested_deeper_than_the_parser_can_go(alice, method, path):
    body = '{"data": {"deep": ' + nested(50_000) + "}}"

    assert_error(call(alice.client, method, path, body), 400, "malformed_json")


def test_it_refuses_data_nested_deeper_than_it_could_store(alice):
    # Deep enough to parse, too deep to encode again for the jsonb column.
    body = '{"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana", "deep": '

    assert_error(send(alice.client, body + nested(900) + "}}"), 400, "malformed_json")
    assert not Message.objects.exists()


def test_it_accepts_data_nested_as_deep_as_real_templates_need(alice):
    deep = {"name": "Ana"}
    for _ in range(20):
        deep = {"items": [deep]}

    response = send(alice.client, {**WELCOME, "data": {"name": "Ana", "order": deep}})

    assert response.status_code == 202, response.content
    assert Message.objects.get().data["order"] == deep


def test_it_refuses_a_number_too_large_for_a_double(alice):
    body = '{"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana", "n": 1e400}}'

    assert_error(send(alice.client, body), 400, "malformed_json")
    assert not Message.objects.exists()


def test_it_refuses_a_lone_surrogate_in_the_data(alice):
    body = '{"template": "welcome", "to": "ana@example.com", "data": {"name": "\\ud800"}}'

    assert_error(send(alice.client, body), 400, "malformed_json")
    assert not Message.objects.exists()


def test_it_refuses_a_lone_surrogate_in_preview_data(alice):
    response = call(
        alice.client, "post", "/v1/templates/welcome/preview", '{"data": {"name": "\\udfff"}}'
    )

    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "data",
    [
        {"name": "Ana\u0000"},
        {"name": "Ana", "k\u0000": 1},
        {"name": "Ana", "list": [{"deep": "\u0000"}]},
    ],
)
def test_it_answers_422_for_a_nul_character_in_the_data(alice, data):
    error = assert_error(send(alice.client, {**WELCOME, "data": data}), 422, "validation_error")

    assert set(error["fields"]) == {"data"}
    assert not Message.objects.exists()


@pytest.mark.parametrize("body", ["[]", "null", '"welcome"', "42", "true"])
def test_it_answers_422_for_a_json_body_that_is_not_an_object(alice, body):
    error = assert_error(send(alice.client, body), 422, "validation_error")

    assert "non_field_errors" in error["fields"]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        *[(method, path, "text/plain") for method, path in BODY_ENDPOINTS],
        ("post", "/v1/messages", "application/x-www-form-urlencoded"),
        ("post", "/v1/messages", "application/xml"),
        ("post", "/v1/messages", "text/json"),
    ],
)
def test_it_answers_415_for_a_body_that_is_not_declared_json(alice, method, path, content_type):
    response = getattr(alice.client, method)(
        path, data=json.dumps(WELCOME), content_type=content_type
    )

    assert_error(response, 415, "unsupported_media_type")
    assert not Message.objects.exists()


def test_it_answers_415_for_a_multipart_form(alice):
    form = {"template": "welcome", "to": "ana@example.com"}

    response = alice.client.post("/v1/messages", form, format="multipart")

    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/v1/messages"),
        ("patch", "/v1/messages"),
        ("delete", "/v1/messages"),
        ("get", "/v1/messages/batch"),
        ("put", f"/v1/messages/{SOME_ID}"),
        ("post", f"/v1/messages/{SOME_ID}"),
        ("delete", "/v1/templates"),
        ("patch", "/v1/templates/welcome"),
        ("post", "/v1/templates/welcome"),
        ("get", "/v1/templates/welcome/preview"),
    ],
)
def test_it_answers_405_for_a_method_the_endpoint_does_not_have(alice, method, path):
    response = call(alice.client, method, path, None if method in ("get", "delete") else {})

    assert_error(response, 405, "method_not_allowed")
    assert method.upper() not in [m.strip() for m in response["Allow"].split(",")]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages/not-a-uuid",
        "/v1/messages/123",
        f"/v1/messages/{SOME_ID}x",
        "/v1/nothing-here",
        "/v1/messages/",
        "/v1/templates/not%20a%20slug",
    ],
)
def test_it_answers_404_json_for_a_url_that_matches_no_endpoint(alice, path):
    assert_error(alice.client.get(path), 404, "not_found")
    assert_error(alice.client.delete(path), 404, "not_found")


# --- single send: shape of the request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": 42}, "to"),
        ({"to": [42]}, "to"),
        ({"to": {"address": "ana@example.com"}}, "to"),
        ({"to": []}, "to"),
        ({"to": None}, "to"),
        ({"data": ["name", "Ana"]}, "data"),
        ({"data": "name=Ana"}, "data"),
        ({"data": None}, "data"),
        ({"template": {"slug": "welcome"}}, "template"),
        ({"template": ["welcome"]}, "template"),
        ({"template": "not a slug!"}, "template"),
        ({"template": "w" * 101}, "template"),
        ({"send_at": "next tuesday"}, "send_at"),
        ({"send_at": "2030-13-45T25:61:00Z"}, "send_at"),
        ({"send_at": 1893456000}, "send_at"),
        ({"send_at": {"at": "2030-01-01T00:00:00Z"}}, "send_at"),
        ({"send_at": "9999-12-31T23:59:59-01:00"}, "send_at"),
        ({"reply_to": ["ana@example.com"]}, "reply_to"),
        ({"reply_to": None}, "reply_to"),
        ({"from": 7}, "from"),
    ],
)
def test_it_answers_422_naming_the_field_of_a_wrong_type(alice, change, field):
    error = assert_error(send(alice.client, {**WELCOME, **change}), 422, "validation_error")

    assert set(error["fields"]) == {field}
    assert not Message.objects.exists()


@pytest.mark.parametrize("missing", ["template", "to"])
def test_it_answers_422_naming_a_missing_required_field(alice, missing):
    body = {name: value for name, value in WELCOME.items() if name != missing}

    error = assert_error(send(alice.client, body), 422, "validation_error")

    assert error["fields"] == {missing: ["This field is required."]}


def test_it_names_every_missing_field_of_an_empty_object(alice):
    error = assert_error(send(alice.client, {}), 422, "validation_error")

    assert set(error["fields"]) == {"template", "to"}


@pytest.mark.parametrize("extra", ["cc", "bcc", "subject", "From", "template_id"])
def test_it_answers_422_for_an_unknown_field(alice, extra):
    error = assert_error(send(alice.client, {**WELCOME, extra: "x"}), 422, "validation_error")

    assert error["fields"] == {extra: ["Unknown field."]}
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"to": "not-an-email"}, {"to": {"0": ["Enter a valid email address."]}}),
        ({"to": ["ana@example.com", "bob@"]}, {"to": {"1": ["Enter a valid email address."]}}),
        (
            {"to": "ana@example.com\nBcc: eve@example.com"},
            {"to": {"0": ["Enter a valid email address."]}},
        ),
        ({"to": [""]}, {"to": {"0": ["This field may not be blank."]}}),
        ({"from": "nobody"}, {"from": ["Enter a valid email address."]}),
        (
            {"from": "ana@example.com\r\nBcc: eve@example.com"},
            {"from": ["Enter a valid email address."]},
        ),
        ({"reply_to": "a@b@c"}, {"reply_to": ["Enter a valid email address."]}),
    ],
    ids=[
        "to",
        "to-list-item",
        "to-header-injection",
        "to-blank",
        "from",
        "from-header-injection",
        "reply_to",
    ],
)
def test_it_answers_422_for_an_invalid_email_address(alice, change, fields):
    error = assert_error(send(alice.client, {**WELCOME, **change}), 422, "validation_error")

    assert error["fields"] == fields
    assert not Message.objects.exists()


def test_it_answers_422_for_too_many_recipients(alice):
    to = [f"user{i}@example.com" for i in range(settings.MAILQ_MAX_RECIPIENTS + 1)]

    error = assert_error(send(alice.client, {**WELCOME, "to": to}), 422, "validation_error")

    assert error["fields"] == {"to": [f"At most {settings.MAILQ_MAX_RECIPIENTS} recipients."]}
    assert not Message.objects.exists()


def test_it_accepts_exactly_the_maximum_number_of_recipients(alice):
    to = [f"user{i}@example.com" for i in range(settings.MAILQ_MAX_RECIPIENTS)]

    assert send(alice.client, {**WELCOME, "to": to}).status_code == 202


def test_it_answers_422_for_an_idempotency_key_over_255_characters(alice):
    response = send(alice.client, WELCOME, HTTP_IDEMPOTENCY_KEY="k" * 256)

    error = assert_error(response, 422, "validation_error")
    assert set(error["fields"]) == {"Idempotency-Key"}
    assert not Message.objects.exists()


# --- single send: meaning of the request -------------------------------------------------------


def test_it_answers_422_unknown_template_for_a_slug_the_customer_does_not_have(alice):
    error = assert_error(
        send(alice.client, {**WELCOME, "template": "nope"}), 422, "unknown_template"
    )

    assert set(error["fields"]) == {"template"}
    assert "nope" in error["message"]
    assert not Message.objects.exists()


def test_it_answers_unknown_template_for_another_customers_template(alice, bob):
    template(alice.customer, slug="invoice")
    body = {**WELCOME, "template": "invoice"}

    assert_error(send(bob.client, body), 422, "unknown_template")
    assert not Message.objects.filter(customer=bob.customer).exists()
    # The same request is fine for the template's owner.
    assert send(alice.client, body).status_code == 202


def test_it_answers_422_render_error_naming_an_undefined_variable(alice):
    template(alice.customer, slug="reset", subject="Reset", html="", text="Go to {{ link }}")

    response = send(alice.client, {**WELCOME, "template": "reset", "data": {"name": "Ana"}})

    error = assert_error(response, 422, "render_error")
    assert "link" in error["message"]
    assert "link" in error["fields"]["data"][0]
    assert not Message.objects.exists()


def test_it_answers_render_error_for_a_template_that_tries_to_escape_the_sandbox(alice):
    template(alice.customer, slug="evil", subject="x", text="{{ name.__class__.__mro__ }}")

    response = send(alice.client, {**WELCOME, "template": "evil"})

    error = assert_error(response, 422, "render_error")
    assert "<class" not in error["message"]
    assert not Message.objects.exists()


# --- reading and cancelling --------------------------------------------------------------------


def test_it_answers_404_for_another_customers_message_on_get_and_delete(alice, bob):
    message_id = send(alice.client, WELCOME).json()["id"]

    assert_error(bob.client.get(f"/v1/messages/{message_id}"), 404, "not_found")
    assert_error(bob.client.delete(f"/v1/messages/{message_id}"), 404, "not_found")

    assert Message.objects.get(pk=message_id).status == Status.QUEUED
    assert alice.client.get(f"/v1/messages/{message_id}").status_code == 200


def test_it_answers_404_for_a_message_id_that_does_not_exist(alice):
    path = f"/v1/messages/{uuid.uuid4()}"

    assert_error(alice.client.get(path), 404, "not_found")
    assert_error(alice.client.delete(path), 404, "not_found")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"template": "a b"}, "template"),
    ],
)
def test_it_answers_422_for_a_bad_list_filter(alice, params, field):
    error = assert_error(alice.client.get("/v1/messages", params), 422, "validation_error")

    assert set(error["fields"]) == {field}


def test_it_answers_404_for_a_forged_cursor(alice):
    assert_error(alice.client.get("/v1/messages", {"cursor": "forged"}), 404, "not_found")


# --- batch -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"messages": {"0": WELCOME}},
        {"messages": "all of them"},
        {"messages": None},
        {"messages": []},
        {},
        {"message": [WELCOME]},
    ],
    ids=["object", "string", "null", "empty", "missing", "misspelt"],
)
def test_it_answers_422_for_a_batch_without_a_non_empty_list_of_messages(alice, body):
    error = assert_error(batch(alice.client, body), 422, "validation_error")

    assert "messages" in error["fields"]
    assert not Message.objects.exists()


def test_it_answers_422_for_a_batch_body_that_is_a_bare_list(alice):
    error = assert_error(batch(alice.client, [WELCOME]), 422, "validation_error")

    assert "non_field_errors" in error["fields"]


def test_it_refuses_a_whole_batch_over_the_item_limit(alice):
    items = [WELCOME] * (settings.MAILQ_BATCH_MAX_ITEMS + 1)

    error = assert_error(batch(alice.client, {"messages": items}), 422, "validation_error")

    assert "messages" in error["fields"]
    assert not Message.objects.exists()


def test_it_accepts_a_batch_of_exactly_the_item_limit(alice):
    items = [WELCOME] * settings.MAILQ_BATCH_MAX_ITEMS

    response = batch(alice.client, {"messages": items})

    assert response.status_code == 202
    assert response.json()["accepted"] == settings.MAILQ_BATCH_MAX_ITEMS
    assert Message.objects.count() == settings.MAILQ_BATCH_MAX_ITEMS


def test_it_accepts_the_valid_items_of_a_mixed_batch_and_reports_each_in_order(alice, bob):
    template(bob.customer, slug="bobs-only")
    items = [
        {**WELCOME, "to": "first@example.com"},
        {**WELCOME, "to": "not-an-email"},
        {**WELCOME, "template": "nope"},
        42,
        {**WELCOME, "data": {}},
        {**WELCOME, "template": "bobs-only"},
        {**WELCOME, "cc": "eve@example.com"},
        {**WELCOME, "to": ["last@example.com", "other@example.com"]},
    ]

    response = batch(alice.client, {"messages": items})

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 6)
    results = body["results"]
    assert len(results) == len(items)

    first, last = results[0], results[7]
    assert first["status"] == last["status"] == "queued"
    assert Message.objects.get(pk=first["id"], customer=alice.customer).to == ["first@example.com"]
    assert Message.objects.get(pk=last["id"], customer=alice.customer).to == [
        "last@example.com",
        "other@example.com",
    ]
    assert Message.objects.count() == 2

    codes = [results[i]["error"]["code"] for i in range(1, 7)]
    assert codes == [
        "validation_error",
        "unknown_template",
        "validation_error",
        "render_error",
        "unknown_template",
        "validation_error",
    ]
    for result in results[1:7]:
        assert set(result) == {"error"}
        assert set(result["error"]) == {"code", "message", "fields"}
    assert set(results[1]["error"]["fields"]) == {"to"}
    assert set(results[2]["error"]["fields"]) == {"template"}
    assert "non_field_errors" in results[3]["error"]["fields"]
    assert "name" in results[4]["error"]["message"]
    assert results[6]["error"]["fields"] == {"cc": ["Unknown field."]}


def test_it_reports_a_batch_items_field_errors_exactly_as_a_single_send_does(alice):
    item = {**WELCOME, "to": ["ana@example.com", "bob@"], "send_at": "soon"}
    single = assert_error(send(alice.client, item), 422, "validation_error")

    result = batch(alice.client, {"messages": [item]}).json()["results"][0]

    assert single["fields"]["to"] == {"1": ["Enter a valid email address."]}
    assert set(single["fields"]) == {"to", "send_at"}
    assert result["error"]["fields"] == single["fields"]


def test_it_rejects_only_the_batch_item_with_a_nul_character(alice):
    items = [WELCOME, {**WELCOME, "data": {"name": "A\u0000na"}}]

    response = batch(alice.client, {"messages": items})

    assert response.status_code == 202
    results = response.json()["results"]
    assert results[0]["status"] == "queued"
    assert results[1]["error"]["code"] == "validation_error"
    assert set(results[1]["error"]["fields"]) == {"data"}
    assert Message.objects.count() == 1


def test_it_answers_202_with_only_errors_when_every_batch_item_is_invalid(alice):
    response = batch(alice.client, {"messages": [{"to": "x"}, {"template": "welcome"}]})

    assert response.status_code == 202
    assert response.json()["accepted"] == 0
    assert not Message.objects.exists()


def test_it_refuses_unknown_fields_in_the_batch_envelope(alice):
    body = {
        "messages": [{"template": "welcome", "to": "a@example.com", "data": {"name": "A"}}],
        "mesages": [],
    }
    response = alice.client.post("/v1/messages/batch", body, format="json")
    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"mesages": ["Unknown field."]}


def test_it_refuses_unknown_fields_in_a_preview(alice):
    response = alice.client.post(
        "/v1/templates/welcome/preview", {"data": {"name": "A"}, "dta": {}}, format="json"
    )
    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"dta": ["Unknown field."]}
