"""templates/rendering.py on its own: no database, no HTTP."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from templates.rendering import RenderError, check_syntax, render


@dataclass
class Source:
    subject: str = "Hello {{ name }}"
    html: str = "<p>Hi {{ name }}</p>"
    text: str = "Hi {{ name }}"


# --- escaping ----------------------------------------------------------------------------------


def test_it_autoescapes_the_html_part_only():
    rendered = render(Source(), {"name": "<script>alert('x')</script> & \"co\""})

    assert rendered.html == (
        "<p>Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;co&#34;</p>"
    )
    assert rendered.text == "Hi <script>alert('x')</script> & \"co\""
    assert rendered.subject == "Hello <script>alert('x')</script> & \"co\""


def test_it_renders_an_empty_part_as_empty():
    rendered = render(Source(html=""), {"name": "Ana"})

    assert rendered.html == ""
    assert rendered.text == "Hi Ana"


def test_it_does_not_evaluate_template_syntax_inside_the_data():
    assert render(Source(), {"name": "{{ 7 * 7 }}"}).text == "Hi {{ 7 * 7 }}"


def test_it_renders_nested_data_loops_and_filters():
    source = Source(
        text="{% for item in order.lines %}{{ item.sku }}x{{ item.qty }} {% endfor %}"
        "{{ total | round(2) }}"
    )

    rendered = render(
        source,
        {
            "name": "Ana",
            "total": 9.999,
            "order": {"lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}]},
        },
    )

    assert rendered.text == "Ax1 Bx2 10.0"


# --- undefined variables -----------------------------------------------------------------------


@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_it_raises_render_error_naming_an_undefined_variable_in_each_part(part):
    source = Source(**{part: "{{ reset_link }}"})

    with pytest.raises(RenderError) as raised:
        render(source, {"name": "Ana"})

    assert raised.value.part == part
    assert part in raised.value.message
    assert "reset_link" in raised.value.message


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("{{ user.email }}", {"user": {}}),
        ("{{ items[3] }}", {"items": [1]}),
        ("{% for x in missing %}{% endfor %}", {}),
        ("{{ missing | upper }}", {}),
    ],
)
def test_it_raises_render_error_for_undefined_lookups_instead_of_rendering_blanks(text, data):
    with pytest.raises(RenderError) as raised:
        render(Source(subject="s", html="", text=text), data)

    assert raised.value.part == "text"


def test_it_renders_a_variable_guarded_by_is_defined():
    source = Source(subject="s", html="", text="{% if coupon is defined %}{{ coupon }}{% endif %}.")

    assert render(source, {}).text == "."


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("{{ a + b }}", {"a": "x", "b": 1}),
        ("{{ 1 / n }}", {"n": 0}),
        ("{{ range(10 ** 9) | list | length }}", {}),
    ],
)
def test_it_raises_render_error_for_errors_that_depend_on_the_data(text, data):
    with pytest.raises(RenderError) as raised:
        render(Source(subject="s", html="", text=text), data)

    assert raised.value.part == "text"


# --- sandbox -----------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
    "{{ name.__class__.__base__.__subclasses__() }}",
    "{{ name | attr('__class__') }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ '{0.__class__.__mro__}'.format(name) }}",
]


@pytest.mark.parametrize("source", ESCAPES)
@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_it_refuses_attribute_escapes_in_the_sandbox_and_leaks_nothing(part, source):
    with pytest.raises(RenderError) as raised:
        render(Source(**{part: source}), {"name": "Ana"})

    message = raised.value.message
    assert raised.value.part == part
    assert "<class" not in message
    assert "subclasses" not in message.replace("__subclasses__", "")
    assert "posix" not in message
    assert "uid=" not in message


# --- subject -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Ana\r\nBcc: eve@example.com",
        "Ana\nBcc: eve@example.com",
        "Ana\rBcc: eve@example.com",
        "Ana\u2028Bcc: eve@example.com",
        "Ana\x0bBcc: eve@example.com",
        "Ana\x85Bcc: eve@example.com",
    ],
)
def test_it_collapses_line_breaks_in_the_subject_against_header_injection(name):
    rendered = render(Source(), {"name": name})

    assert rendered.subject == "Hello Ana Bcc: eve@example.com"
    assert not any(ch in rendered.subject for ch in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def test_it_joins_a_subject_written_over_several_lines_into_one():
    source = Source(subject="\n  Order {{ number }}\n  shipped\n")

    assert render(source, {"name": "Ana", "number": 7}).subject == "Order 7   shipped"


def test_it_keeps_line_breaks_in_the_bodies():
    rendered = render(Source(html="<p>1</p>\n<p>2</p>", text="1\n2"), {"name": "Ana"})

    assert rendered.html == "<p>1</p>\n<p>2</p>"
    assert rendered.text == "1\n2"


# --- syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["{{ name }}", "{% if a %}{{ a }}{% else %}-{% endif %}", "", "plain text"]
)
@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_it_accepts_valid_syntax(part, source):
    check_syntax(source, part, html=part == "html")


@pytest.mark.parametrize(
    "source",
    [
        "{{ name ",
        "{% if a %}",
        "{% endif %}",
        "{{ name | }}",
        "{% for %}",
        "{{ 'a' 'b' +}}",
        "{% unknown_tag %}",
    ],
)
@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_it_reports_a_syntax_error_with_the_part_name(part, source):
    with pytest.raises(RenderError) as raised:
        check_syntax(source, part, html=part == "html")

    assert raised.value.part == part
    assert raised.value.message.startswith(f"Template syntax error in {part}")


def test_it_reports_the_line_of_a_syntax_error():
    with pytest.raises(RenderError) as raised:
        check_syntax("one\ntwo\n{{ three ", "text")

    assert "(line 3)" in raised.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ 10 * 'x' * 100000000 }}",
        "{{ [1] * 100000000 }}",
        "{{ 2 ** 100000000 }}",
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    ],
)
def test_it_refuses_templates_that_would_build_huge_values(source):
    version = SimpleNamespace(subject="s", html="", text=source)
    with pytest.raises(RenderError):
        render(version, {})
