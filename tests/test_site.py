"""Schema, docs, health and admin pages answer, and the schema is complete."""

from django.core.management import call_command


def test_the_openapi_schema_is_served_and_names_every_operation(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "send_message",
        "send_batch",
        "get_message",
        "list_messages",
        "cancel_message",
        "redrive_message",
        "create_template",
        "preview_template",
        "get_stats",
    } <= operations
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_the_schema_generates_without_warnings(tmp_path):
    call_command("spectacular", "--file", str(tmp_path / "schema.yml"), "--fail-on-warn")


def test_the_docs_page_uses_self_hosted_assets(client):
    response = client.get("/v1/docs")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert b"cdn." not in response.content


def test_healthz_answers(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_an_unknown_url_is_a_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_admin_pages_render_for_staff(admin_client, alice):
    for url in [
        "/admin/",
        "/admin/customers/customer/",
        "/admin/customers/tier/",
        "/admin/delivery/message/",
        "/admin/delivery/deadletter/",
        "/admin/email_templates/emailtemplate/",
        "/admin/customers/apikey/",
        f"/admin/customers/customer/{alice.customer.pk}/change/",
    ]:
        assert admin_client.get(url).status_code == 200, url


def test_the_customer_admin_shows_flow_counts_and_pauses_and_resumes(admin_client, alice):
    from customers.models import Customer
    from delivery.models import Status
    from tests.factories import accepted

    Customer.objects.filter(pk=alice.customer.pk).update(inflight_cap=2)
    alice.customer.refresh_from_db()
    accepted(alice.customer, count=5)
    page = admin_client.get("/admin/customers/customer/").content.decode().lower()
    assert "in flight" in page and "deferred" in page
    assert '<td class="field-in_flight">2</td>' in page
    assert '<td class="field-deferred">3</td>' in page

    url = "/admin/customers/customer/"
    admin_client.post(url, {"action": "pause_sending", "_selected_action": [alice.customer.pk]})
    alice.customer.refresh_from_db()
    assert alice.customer.sending_paused
    alice.customer.messages.filter(status=Status.QUEUED).update(status=Status.SENT)
    admin_client.post(url, {"action": "resume_sending", "_selected_action": [alice.customer.pk]})
    alice.customer.refresh_from_db()
    assert not alice.customer.sending_paused
    assert alice.customer.messages.filter(status=Status.QUEUED).count() == 2
