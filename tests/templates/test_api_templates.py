"""Template endpoints: CRUD where every change is a new version, and preview."""

import pytest

from delivery.models import Message
from templates.models import EmailTemplate, TemplateVersion
from tests.factories import template

INVOICE = {
    "slug": "invoice",
    "name": "Monthly invoice",
    "subject": "Invoice {{ number }}",
    "html": "<p>Total: {{ total }}</p>",
    "text": "Total: {{ total }}",
}


def create(client, body=None):
    return client.post("/v1/templates", body or INVOICE, format="json")


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["code"] == code, error
    return error


def send(client, slug: str = "welcome", data=None):
    body = {"template": slug, "to": "ana@example.com", "data": data or {"name": "Ana"}}
    return client.post("/v1/messages", body, format="json")


# --- create ------------------------------------------------------------------------------------


def test_it_creates_a_template_as_version_1(alice):
    response = create(alice.client)

    assert response.status_code == 201
    body = response.json()
    assert {k: body[k] for k in INVOICE} == INVOICE
    assert body["version"] == 1
    assert body["created_at"]
    stored = EmailTemplate.objects.get(customer=alice.customer, slug="invoice")
    assert stored.current_version.number == 1
    assert stored.current_version.subject == INVOICE["subject"]


def test_it_creates_a_template_with_only_a_text_part(alice):
    response = create(alice.client, {"slug": "plain", "subject": "Hi", "text": "Hello"})

    assert response.status_code == 201
    assert response.json()["html"] == ""


def test_it_keeps_the_whitespace_of_the_bodies(alice):
    body = {**INVOICE, "text": "  Total:\n    {{ total }}\n"}

    assert create(alice.client, body).json()["text"] == "  Total:\n    {{ total }}\n"


def test_it_answers_422_for_a_template_with_neither_html_nor_text(alice):
    error = error_of(
        create(alice.client, {"slug": "empty", "subject": "Hi"}), 422, "validation_error"
    )

    assert set(error["fields"]) == {"html"}
    assert not EmailTemplate.objects.filter(slug="empty").exists()


@pytest.mark.parametrize("missing", ["slug", "subject"])
def test_it_answers_422_naming_a_missing_required_field(alice, missing):
    body = {k: v for k, v in INVOICE.items() if k != missing}

    error = error_of(create(alice.client, body), 422, "validation_error")

    assert error["fields"] == {missing: ["This field is required."]}


def test_it_answers_422_for_an_unknown_field(alice):
    error = error_of(
        create(alice.client, {**INVOICE, "from": "x@example.com"}), 422, "validation_error"
    )

    assert error["fields"] == {"from": ["Unknown field."]}


def test_it_answers_422_for_a_slug_that_is_not_a_slug(alice):
    error = error_of(
        create(alice.client, {**INVOICE, "slug": "my invoice"}), 422, "validation_error"
    )

    assert set(error["fields"]) == {"slug"}


def test_it_answers_409_template_exists_for_a_duplicate_slug(alice):
    assert create(alice.client).status_code == 201

    error = error_of(create(alice.client, {**INVOICE, "subject": "Other"}), 409, "template_exists")

    assert error["fields"] == {"slug": ["Already exists."]}
    stored = EmailTemplate.objects.get(customer=alice.customer, slug="invoice")
    assert stored.current_version.subject == INVOICE["subject"]
    assert stored.versions.count() == 1


def test_it_lets_two_customers_use_the_same_slug(alice, bob):
    assert create(alice.client).status_code == 201

    assert create(bob.client, {**INVOICE, "subject": "Bob's"}).status_code == 201
    assert EmailTemplate.objects.filter(slug="invoice").count() == 2


@pytest.mark.parametrize(
    ("part", "source"),
    [
        ("subject", "Invoice {{ number "),
        ("html", "<p>{% if total %}{{ total }}</p>"),
        ("text", "Line one\nLine two\n{{ total | }}"),
        ("html", "{% endfor %}"),
    ],
)
def test_it_answers_422_naming_the_part_with_invalid_jinja_syntax(alice, part, source):
    error = error_of(create(alice.client, {**INVOICE, part: source}), 422, "validation_error")

    assert set(error["fields"]) == {part}
    assert part in error["fields"][part][0]
    assert "syntax" in error["fields"][part][0].lower()
    assert not EmailTemplate.objects.filter(slug="invoice").exists()


def test_it_reports_the_line_of_a_syntax_error(alice):
    response = create(alice.client, {**INVOICE, "text": "one\ntwo\n{{ total | }}"})

    assert "line 3" in error_of(response, 422, "validation_error")["fields"]["text"][0]


# --- read --------------------------------------------------------------------------------------


def test_it_shows_a_template_with_its_current_version(alice):
    response = alice.client.get("/v1/templates/welcome")

    assert response.status_code == 200
    body = response.json()
    assert body["slug"] == "welcome"
    assert body["version"] == 1
    assert body["subject"] == "Hello {{ name }}"
    assert body["html"] == "<p>Hi {{ name }}</p>"
    assert body["text"] == "Hi {{ name }}"


def test_it_lists_only_the_customers_own_templates(alice, bob):
    create(alice.client)
    template(bob.customer, slug="bobs-news", subject="News")

    alices = alice.client.get("/v1/templates").json()["results"]
    bobs = bob.client.get("/v1/templates").json()["results"]

    assert {t["slug"] for t in alices} == {"welcome", "invoice"}
    assert {t["slug"] for t in bobs} == {"welcome", "bobs-news"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/templates/invoice"),
        ("put", "/v1/templates/invoice"),
        ("delete", "/v1/templates/invoice"),
        ("post", "/v1/templates/invoice/preview"),
    ],
)
def test_it_answers_404_for_another_customers_template(alice, bob, method, path):
    create(alice.client)
    body = {"subject": "Pwned", "text": "Pwned"} if method == "put" else {"data": {}}

    response = getattr(bob.client, method)(path, body, format="json")

    error_of(response, 404, "not_found")
    stored = EmailTemplate.objects.get(customer=alice.customer, slug="invoice")
    assert stored.deleted_at is None
    assert stored.versions.count() == 1
    assert stored.current_version.subject == INVOICE["subject"]


def test_it_answers_404_for_a_template_that_does_not_exist(alice):
    error_of(alice.client.get("/v1/templates/nope"), 404, "not_found")


# --- update ------------------------------------------------------------------------------------


def test_it_makes_version_2_on_put(alice):
    response = alice.client.put(
        "/v1/templates/welcome",
        {"subject": "Welcome {{ name }}!", "text": "Hey {{ name }}"},
        format="json",
    )

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 2
    assert body["subject"] == "Welcome {{ name }}!"
    assert body["html"] == ""  # a PUT replaces the content whole
    assert alice.client.get("/v1/templates/welcome").json()["version"] == 2
    numbers = TemplateVersion.objects.filter(
        template__slug="welcome", template__customer=alice.customer
    )
    assert sorted(numbers.values_list("number", flat=True)) == [1, 2]


def test_it_keeps_a_message_accepted_before_a_put_on_version_1(alice):
    before = send(alice.client).json()["id"]

    alice.client.put(
        "/v1/templates/welcome", {"subject": "New {{ name }}", "text": "New"}, format="json"
    )
    after = send(alice.client).json()["id"]

    assert Message.objects.get(pk=before).template_version.number == 1
    assert Message.objects.get(pk=before).template_version.subject == "Hello {{ name }}"
    assert Message.objects.get(pk=after).template_version.number == 2


def test_it_keeps_the_current_version_when_a_put_is_invalid(alice):
    response = alice.client.put(
        "/v1/templates/welcome", {"subject": "{{ broken", "text": "x"}, format="json"
    )

    error = error_of(response, 422, "validation_error")
    assert set(error["fields"]) == {"subject"}
    assert alice.client.get("/v1/templates/welcome").json()["version"] == 1


def test_it_refuses_to_change_the_slug_with_put(alice):
    response = alice.client.put(
        "/v1/templates/welcome", {"slug": "hello", "subject": "x", "text": "x"}, format="json"
    )

    assert error_of(response, 422, "validation_error")["fields"] == {"slug": ["Unknown field."]}


# --- delete ------------------------------------------------------------------------------------


def test_it_deletes_a_template_so_it_can_no_longer_be_read_or_sent(alice):
    accepted = send(alice.client).json()["id"]

    response = alice.client.delete("/v1/templates/welcome")

    assert response.status_code == 204
    assert response.content == b""
    error_of(alice.client.get("/v1/templates/welcome"), 404, "not_found")
    error_of(alice.client.delete("/v1/templates/welcome"), 404, "not_found")
    error_of(send(alice.client), 422, "unknown_template")
    assert alice.client.get("/v1/templates").json()["results"] == []
    # Mail accepted before the delete can still be rendered: its version is kept.
    assert Message.objects.get(pk=accepted).template_version.number == 1


def test_it_allows_the_slug_of_a_deleted_template_to_be_used_again(alice):
    alice.client.delete("/v1/templates/welcome")

    response = create(alice.client, {**INVOICE, "slug": "welcome"})

    assert response.status_code == 201
    assert response.json()["version"] == 1
    assert send(alice.client, data={"number": 1, "total": 2}).status_code == 202


# --- preview -----------------------------------------------------------------------------------


def test_it_previews_with_html_autoescaped_and_text_and_subject_verbatim(alice):
    data = {"name": "<b>Ana</b> & co"}

    response = alice.client.post("/v1/templates/welcome/preview", {"data": data}, format="json")

    assert response.status_code == 200
    assert response.json() == {
        "version": 1,
        "subject": "Hello <b>Ana</b> & co",
        "html": "<p>Hi &lt;b&gt;Ana&lt;/b&gt; &amp; co</p>",
        "text": "Hi <b>Ana</b> & co",
    }
    assert not Message.objects.exists()


def test_it_previews_the_current_version(alice):
    alice.client.put(
        "/v1/templates/welcome", {"subject": "v2 {{ name }}", "text": "2"}, format="json"
    )

    body = alice.client.post(
        "/v1/templates/welcome/preview", {"data": {"name": "Ana"}}, format="json"
    ).json()

    assert (body["version"], body["subject"]) == (2, "v2 Ana")


def test_it_answers_422_render_error_naming_a_missing_variable_in_preview(alice):
    response = alice.client.post(
        "/v1/templates/welcome/preview", {"data": {"nom": "Ana"}}, format="json"
    )

    error = error_of(response, 422, "render_error")
    assert "name" in error["message"]
    assert "name" in error["fields"]["data"][0]


def test_it_answers_render_error_in_preview_for_a_sandbox_escape(alice):
    create(alice.client, {**INVOICE, "text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"})

    response = alice.client.post(
        "/v1/templates/invoice/preview", {"data": {"number": 1, "total": 2}}, format="json"
    )

    error = error_of(response, 422, "render_error")
    assert "subclasses" not in error["message"]
    assert "<class" not in error["message"]


def test_it_does_not_evaluate_template_syntax_inside_the_data(alice):
    response = alice.client.post(
        "/v1/templates/welcome/preview", {"data": {"name": "{{ 7 * 7 }}"}}, format="json"
    )

    assert response.json()["text"] == "Hi {{ 7 * 7 }}"
