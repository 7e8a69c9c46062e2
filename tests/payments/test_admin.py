import pytest
from django.test import Client

@pytest.mark.django_db
def test_probe(django_user_model):
    user = django_user_model.objects.create_superuser("root", "", "pw-unused-123")
    client = Client()
    client.force_login(user)
    r = client.get("/admin/payments/payment/")
    print(r.status_code, r.content[:300])
    assert r.status_code == 200
