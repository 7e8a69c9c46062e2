"""The admin is for staff only and every change it accepts carries a CSRF token: a logged-in
operator's browser cannot be made to post to it from another site."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Merchant

pytestmark = pytest.mark.django_db

ADD_MERCHANT = "admin:accounts_merchant_add"


@pytest.fixture
def staff_client(django_user_model) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", None))
    return client


def merchant_form(client: Client, name: str, **extra) -> dict:
    """The add form as the admin renders it (its defaults), with a name."""
    form = client.get(reverse(ADD_MERCHANT)).context["adminform"].form
    data = {key: value for key, value in form.initial.items() if value is not None}
    data.update(
        {
            name_: field.initial() if callable(field.initial) else field.initial
            for name_, field in form.fields.items()
            if name_ not in data and field.initial is not None
        }
    )
    return {**data, "name": name, **extra}


@pytest.mark.parametrize("who", ["anonymous", "non-staff user"])
def test_given_someone_not_staff_when_posting_to_the_admin_then_nothing_is_created(
    django_user_model, who
):
    client = Client()
    if who == "non-staff user":
        client.force_login(django_user_model.objects.create_user("shopper", password=None))

    response = client.post(reverse(ADD_MERCHANT), {"name": "Sneaky"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert not Merchant.objects.filter(name="Sneaky").exists()


def test_given_a_logged_in_operator_when_a_post_has_no_csrf_token_then_it_is_refused(
    staff_client,
):
    data = merchant_form(staff_client, "Forged")

    response = staff_client.post(reverse(ADD_MERCHANT), data)

    assert response.status_code == 403
    assert not Merchant.objects.filter(name="Forged").exists()


def test_given_a_logged_in_operator_when_the_post_carries_its_csrf_token_then_it_is_accepted(
    staff_client,
):
    staff_client.get(reverse(ADD_MERCHANT))
    token = staff_client.cookies["csrftoken"].value
    data = merchant_form(staff_client, "Genuine", csrfmiddlewaretoken=token)

    response = staff_client.post(reverse(ADD_MERCHANT), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Merchant.objects.filter(name="Genuine").exists()


def test_given_the_login_form_when_posted_without_a_csrf_token_then_it_is_refused(
    django_user_model,
):
    django_user_model.objects.create_superuser("ops", "ops@example.com", "s3cret-pass-phrase")
    client = Client(enforce_csrf_checks=True)

    response = client.post(
        reverse("admin:login"), {"username": "ops", "password": "s3cret-pass-phrase"}
    )

    assert response.status_code == 403
    assert "_auth_user_id" not in client.session
