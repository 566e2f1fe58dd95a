from django.urls import path

import memguard.contrib.django

urlpatterns = [
    path("api/metrics/", memguard.contrib.django.metrics_view),
]
