"""Only this machine can use the server (issue 29, cases 4, 5, 16, 17): a ``Host`` header that names another
site is refused (DNS rebinding), no error body names a file, and the address is bound before the server says
it listens, so a taken port or a bad address is one line."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from cli_helpers import play

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:80", "127.0.0.1.evil.example.com", ""])
def test_a_host_header_naming_another_site_is_refused(live, host):
    port = live["url"].rsplit(":", 1)[1]
    status, _, body = live["client"].request("GET", "/api/info", headers={"Host": host.replace(":80", f":{port}")})
    assert status == 400 and "answers only requests addressed to" in json.loads(body)["error"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}"])
def test_the_names_of_this_machine_are_answered(live, host):
    port = live["url"].rsplit(":", 1)[1]
    status, _, body = live["client"].request("GET", "/api/info", headers={"Host": host.format(port=port)})
    assert status == 200 and json.loads(body)["num_images"] > 0


def test_a_wildcard_server_answers_addresses_and_its_host_name_but_not_other_names():
    from sangal.serve.app import allowed_hosts, host_name

    assert {"127.0.0.1", "localhost", "::1", "192.168.1.7"} <= allowed_hosts("192.168.1.7")
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    assert socket.gethostname().lower() not in allowed_hosts("127.0.0.1")
    assert [host_name(h) for h in ("[::1]:8000", "LocalHost:80", "a.b", "::1")] == ["::1", "localhost", "a.b", "::1"]


def test_a_gallery_file_leading_outside_names_no_path(live, service, served_index, tmp_path, monkeypatch):
    gallery = shutil.copytree(served_index["gallery"], tmp_path / "gallery")
    secret = tmp_path / "secret.jpg"
    shutil.copy(gallery / served_index["paths"][0], secret)
    (gallery / served_index["paths"][0]).unlink()
    (gallery / served_index["paths"][0]).symlink_to(secret)  # swapped in after indexing
    monkeypatch.setattr(service.index, "gallery_dir", gallery)
    status, _, body = live["client"].request("GET", "/api/gallery/0/maps")
    error = json.loads(body)["error"]
    assert status == 403 and "gallery image 0" in error and "leads outside the gallery" in error
    assert "/" not in error and "meta.json" not in error and served_index["paths"][0] not in error


def test_a_taken_port_is_one_line_before_any_announcement(served_index, capsys):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        code, out, err = play(capsys, "serve", "--index", served_index["dir"], "--port", port)
    finally:
        holder.close()
    assert code == 2 and out == "" and err.splitlines() == [err.strip()] and f"port {port}" in err
    assert err.startswith("error: cannot listen on 127.0.0.1")


def test_an_address_of_another_machine_is_one_line(served_index, capsys):
    code, out, err = play(capsys, "serve", "--index", served_index["dir"], "--host", "192.0.2.1", "--port", "8000")
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "cannot listen on 192.0.2.1" in err


def test_a_port_out_of_range_is_a_usage_error(served_index, capsys):
    code, out, err = play(capsys, "serve", "--index", served_index["dir"], "--port", "99999")
    assert code == 2 and out == "" and "--port: must be <= 65535, got 99999" in err
