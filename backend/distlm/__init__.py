"""The DistLM Python client (``distlm.client``) and the ``distlm`` command line
(``distlm.cli``): HTTP only (httpx), nothing of the gateway imported, so they install and run
on any machine that can reach a gateway. ``from distlm.client import Client``."""
