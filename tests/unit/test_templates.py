"""Templates: locale and key choice, escaping, and a sandbox that refuses internals and
runaway work with a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from clarion.domain import errors
from clarion.services.templates import (
    EmailTemplate,
    Limits,
    Part,
    Renderer,
    Subject,
    TemplateKey,
    choose_template,
    locale_candidates,
    normalize_locale,
)

DATA: dict[str, Any] = {
    "event": {
        "name": "<b>Bob</b>",
        "items": ["a", "b"],
        "bio": '<p onclick="steal()">hi<script>evil()</script><a href="javascript:x">l</a></p>',
    },
    "user": {"first_name": "Bob"},
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def refused(renderer: Renderer, source: str, part: Part = Part.HTML) -> str:
    with pytest.raises(errors.InvalidRequest) as caught:
        renderer.render(source, part, DATA)
    return caught.value.message


# --- locale and key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "normal"),
    [("pt_br", "pt-BR"), ("EN", "en"), ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419")],
)
def test_locales_are_normalized(tag: str, normal: str) -> None:
    assert normalize_locale(tag) == normal


def test_unreadable_locales_are_none() -> None:
    assert normalize_locale("") is None
    assert normalize_locale("english!") is None


def test_locale_candidates_go_from_the_user_to_the_tenant_default() -> None:
    assert locale_candidates("pt_BR", "en-US") == ["pt-BR", "pt", "en-US", "en"]
    assert locale_candidates(None, "de") == ["de"]
    assert locale_candidates("de-AT", "de") == ["de-AT", "de"]


def key(subject: Subject, name: str, locale: str) -> TemplateKey:
    return TemplateKey(subject, name, "email", locale)


def test_the_users_language_beats_the_event_types_template_in_another_language() -> None:
    templates = {
        key(Subject.EVENT_TYPE, "order.shipped", "en"): "event-en",
        key(Subject.CATEGORY, "orders", "pt"): "category-pt",
    }
    found = choose_template(
        templates,
        event_type="order.shipped",
        category="orders",
        channel="email",
        user_locale="pt-BR",
        tenant_default_locale="en",
    )
    assert found == (key(Subject.CATEGORY, "orders", "pt"), "category-pt")


def test_the_event_type_beats_the_category_in_the_same_locale_and_default_is_the_fallback() -> None:
    templates = {
        key(Subject.EVENT_TYPE, "order.shipped", "en"): "event-en",
        key(Subject.CATEGORY, "orders", "en"): "category-en",
    }
    found = choose_template(
        templates,
        event_type="order.shipped",
        category="orders",
        channel="email",
        user_locale="fr-FR",
        tenant_default_locale="en",
    )
    assert found is not None
    assert found[1] == "event-en"
    assert (
        choose_template(
            templates,
            event_type="x",
            category=None,
            channel="email",
            user_locale=None,
            tenant_default_locale="en",
        )
        is None
    )


# --- rendering ----------------------------------------------------------------------------------


def test_html_escapes_event_data_by_default(renderer: Renderer) -> None:
    out = renderer.render("<h1>Hi {{ event.name }}</h1>", Part.HTML, DATA)
    assert out == "<h1>Hi &lt;b&gt;Bob&lt;/b&gt;</h1>"


def test_trusted_html_is_sanitized_by_nh3(renderer: Renderer) -> None:
    out = renderer.render("{{ event.bio|trusted_html }}", Part.HTML, DATA)
    assert "<p>hi" in out
    assert "script" not in out
    assert "onclick" not in out
    assert "javascript" not in out


def test_text_parts_are_not_escaped_and_trusted_html_becomes_text(renderer: Renderer) -> None:
    assert renderer.render("Hi {{ event.name }}", Part.TEXT, DATA) == "Hi <b>Bob</b>"
    assert "<" not in renderer.render("{{ event.bio|trusted_html }}", Part.TEXT, DATA)


def test_a_line_part_is_one_line(renderer: Renderer) -> None:
    data = {"event": {"name": "a\r\nBcc: x@example.com"}}
    out = renderer.render("Order {{ event.name }}\n  shipped", Part.LINE, data)
    assert out == "Order a Bcc: x@example.com shipped"


def test_loops_filters_and_defaults_work(renderer: Renderer) -> None:
    source = (
        "{% for i in event['items'] %}{{ loop.index }}{{ i|upper }}{% endfor %} "
        "{{ user.last_name|default('friend') }} {{ event['items']|join(', ') }} "
        "{% if user.first_name is defined %}{{ user.first_name|lower }}{% endif %}"
    )
    assert renderer.render(source, Part.TEXT, DATA) == "1A2B friend a, b bob"


def test_render_email_renders_all_three_parts(renderer: Renderer) -> None:
    rendered = renderer.render_email(
        EmailTemplate("Hi {{ user.first_name }}", "Hi {{ event.name }}", "<p>{{ event.name }}"),
        DATA,
    )
    assert rendered.subject == "Hi Bob"
    assert rendered.text == "Hi <b>Bob</b>"
    assert rendered.html == "<p>&lt;b&gt;Bob&lt;/b&gt;"


def test_an_undefined_value_is_an_error(renderer: Renderer) -> None:
    assert "'missing' is undefined" in refused(renderer, "{{ missing }}")


def test_a_syntax_error_names_the_line(renderer: Renderer) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        renderer.check("line one\n{{ x ", Part.TEXT)
    assert "line 2" in caught.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ event.__class__.__mro__ }}",
        "{{ range.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ event|attr('__class__') }}",
        "{{ '{0.__class__}'.format(event) }}",
        "{{ '%s' % event }}",
        "{{ event['items'].append(1) }}",
        "{{ event.name.zfill(10) }}",
    ],
)
def test_internals_are_out_of_reach(renderer: Renderer, source: str) -> None:
    message = refused(renderer, source)
    assert message.startswith("template html:")


@pytest.mark.parametrize("source", ["{{ event.name|safe }}", "{{ '%d'|format(1) }}"])
def test_unsafe_filters_do_not_exist(renderer: Renderer, source: str) -> None:
    assert "No filter named" in refused(renderer, source)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% for i in range(10**9) %}{% endfor %}", "range() is limited"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "steps",
        ),
        ("{{ 'a' * 10**9 }}", "would build a value"),
        ("{{ 2 ** 100000 }}", "bits"),
        ("{{ 'a'|center(10**9) }}", "width"),
        ("{{ 'ab'|replace('', 'x' * 1000) * 1 }}", None),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "would build a value",
        ),
        (
            "{% set x %}{% for i in range(100000) %}{{ 'a' * 200000 }}{% endfor %}{% endset %}",
            "characters of work",
        ),
        ("{% for i in range(100000) %}{{ 'a' * 100 }}{% endfor %}", "output is over"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "nest deeper"),
    ],
)
def test_runaway_work_is_refused_cleanly(
    renderer: Renderer, source: str, reason: str | None
) -> None:
    if reason is None:  # within limits: fine
        renderer.render(source, Part.TEXT, DATA)
        return
    assert reason in refused(renderer, source, Part.TEXT)


def test_the_deadline_stops_a_slow_render() -> None:
    ticks = iter(range(1_000_000))
    slow = Renderer(limits=Limits(seconds=5), timer=lambda: float(next(ticks)))
    with pytest.raises(errors.InvalidRequest) as caught:
        slow.render("{% for i in range(100) %}{{ i }}{% endfor %}", Part.TEXT, {})
    assert "longer than 5 s" in caught.value.message


def test_oversized_templates_and_subjects_are_refused(renderer: Renderer) -> None:
    with pytest.raises(errors.InvalidRequest):
        renderer.check("x" * (64 * 1024 + 1), Part.TEXT)
    with pytest.raises(errors.InvalidRequest):
        renderer.render("{{ 'a' * 1000 }}", Part.LINE, {})


def test_includes_have_no_loader(renderer: Renderer) -> None:
    refused(renderer, "{% include 'secrets.txt' %}")


@pytest.mark.parametrize(
    "source",
    [
        "{% set ns = namespace(l=['x' * 200000]) %}{% for i in range(60) %}"
        "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson }}",
        "{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(60) %}"
        "{% set ns.l = ns.l + ns.l %}{% endfor %}",
        "{{ ['a' * 200000] * 100 }}",
    ],
)
def test_shared_references_cannot_multiply_a_value(renderer: Renderer, source: str) -> None:
    assert "would build a value" in refused(renderer, source, Part.TEXT)


def test_literals_and_unpacking_still_work(renderer: Renderer) -> None:
    source = (
        "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %} "
        "{{ {'b': [1, 2]}|tojson }} {{ [1, 2, 3]|join(',') }}"
    )
    assert renderer.render(source, Part.TEXT, {}) == 'a=1 {"b": [1, 2]} 1,2,3'
