"""Live and test mode in the admin: a "Mode" filter that shows live objects unless test ones are
asked for (so lists, and what is exported from them, are live data by default), a TEST badge, and
the banner above a list of test objects.

Test objects are those made with a test key (``cpk_test_…``): their ``livemode`` is False.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

LIVE, TEST, ALL = "live", "test", "all"
TEST_BANNER = (
    "Test mode: these {things} were made with test keys (cpk_test_…) on the development chain; "
    "no real coins moved. They never appear in live API lists, webhooks or metrics."
)
# The badge's style (admin pages allow no inline styles under the CSP).
MEDIA_CSS = "cryptopay/admin_test_mode.css"


def mode_filter(field: str = "livemode") -> type[admin.SimpleListFilter]:
    """A list filter on ``field`` (a livemode boolean, or a path to one): Live (the default),
    Test, or All."""

    class ModeFilter(admin.SimpleListFilter):
        title = "mode"
        parameter_name = "mode"

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(LIVE, "Live"), (TEST, "Test"), (ALL, "All")]

        def value(self) -> str:
            value = super().value()
            return value if value in (LIVE, TEST, ALL) else LIVE

        def choices(self, changelist: Any) -> Any:
            # No Django "All" entry meaning "no filter": here no filter means Live.
            for lookup, title in self.lookup_choices:
                yield {
                    "selected": self.value() == lookup,
                    "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                    "display": title,
                }

        def queryset(self, request: HttpRequest, queryset: Any) -> Any:
            if self.value() == ALL:
                return queryset
            return queryset.filter(**{field: self.value() == LIVE})

    return ModeFilter


def mode_choice(*, live: str, test: str, help_text: str) -> forms.ChoiceField:
    """An add form's Live/Test choice (``live`` and ``test`` label the two); left out: live.
    ``form_livemode`` reads it."""
    return forms.ChoiceField(
        choices=[(LIVE, live), (TEST, test)],
        initial=LIVE,
        required=False,
        widget=forms.RadioSelect,
        help_text=help_text,
    )


def form_livemode(cleaned_data: dict[str, Any]) -> bool:
    return cleaned_data.get("mode") != TEST


def mode_badge(livemode: bool) -> SafeString | str:
    """What a list's Mode column shows: a TEST badge for test objects, "live" otherwise."""
    if livemode:
        return "live"
    return format_html('<span class="cp-test-badge" title="{}">TEST</span>', "Test mode")


def test_mode_banner(request: HttpRequest, model_admin: admin.ModelAdmin, things: str) -> None:
    """The banner over a list showing test objects (Mode: Test or All)."""
    mode = request.GET.get("mode")
    if mode == TEST:
        model_admin.message_user(request, TEST_BANNER.format(things=things), messages.WARNING)
    elif mode == ALL:
        model_admin.message_user(
            request, f"Live and test {things}: test ones carry a TEST badge.", messages.WARNING
        )


if TYPE_CHECKING:
    # What the mixin is mixed into, so the checker knows what ``super()`` has.
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = object


class ModeAdminMixin(_ModelAdmin):
    """For a ModelAdmin of objects with a mode: a ``mode`` column (TEST badge), the badge's
    stylesheet and the banner over lists showing test objects. Put ``mode_filter(…)`` in the
    admin's ``list_filter`` (lists default to live)."""

    mode_field = "livemode"  # the livemode boolean, or a path to one ("endpoint__livemode")
    mode_things = "objects"  # what the banner calls them

    @property
    def media(self) -> forms.Media:
        return super().media + forms.Media(css={"all": [MEDIA_CSS]})

    @admin.display(description="Mode")
    def mode(self, obj: Any) -> SafeString | str:
        for name in self.mode_field.split("__"):
            obj = getattr(obj, name)
        return mode_badge(obj)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        test_mode_banner(request, self, self.mode_things)
        return super().changelist_view(request, extra_context)
