"""A suite base for tests that need both identity providers: the real OpenID
Provider (tests/idp, npm oidc-provider) as "corp" and the stand-in OP
(rogue_op.py) under a name the suite chooses, behind one Gatehouse with sessions
in SQLite. Subclasses give the routes and the stand-in's extra settings; the
base starts and stops everything and keeps a log mark per test."""
import unittest

from harness import Backend, Gatehouse, basic_config, free_port
from oidc import CLIENT_SECRET, IdP, client_for, idp_conf
from rogue_op import RogueOP


class TwoProviderCase(unittest.TestCase):
    backend_name = "app"
    rogue_id = "rogue"
    extra_redirect_uris = ()

    @classmethod
    def rogue_settings(cls):
        """Settings of the stand-in's identity_providers entry beyond id, issuer
        and client."""
        return {}

    @classmethod
    def extra_files(cls):
        """Files written next to the config (policies), beyond the secret."""
        return {}

    @classmethod
    def extra_config(cls):
        """Top-level config keys beyond listen, state and identity_providers."""
        return {}

    @classmethod
    def files(cls):
        """Files for Gatehouse's directory beyond the client secret."""
        return {}

    @classmethod
    def corp_settings(cls):
        """Settings of the real IdP's entry beyond idp_conf's."""
        return {}

    @classmethod
    def routes(cls):
        raise NotImplementedError("a TwoProviderCase names its routes")

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend(cls.backend_name)
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        client = client_for(cls.base)
        client["redirect_uris"].extend(cls.extra_redirect_uris)
        cls.idp = IdP([client])
        cls.rogue = RogueOP(client_secret=CLIENT_SECRET)
        rogue_conf = {"id": cls.rogue_id, "type": "oidc", "issuer": cls.rogue.issuer,
                      "client_id": "gatehouse", "client_secret_file": "oidc-secret",
                      "allow_insecure_issuer": True, "jwks_refresh_min_interval": "1s",
                      **cls.rogue_settings()}
        cfg = basic_config(cls.routes(), listen=[{"address": f"127.0.0.1:{port}"}],
                           state={"sqlite": "var/gatehouse.db"},
                           identity_providers=[idp_conf(cls.idp, **cls.corp_settings()),
                                               rogue_conf],
                           **cls.extra_config())
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET, **cls.extra_files(),
                                           **cls.files()})
        except Exception:
            cls.idp.stop()
            cls.rogue.stop()
            cls.backend.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.rogue.stop()
        cls.backend.stop()

    def setUp(self):
        self.mark_log()

    def mark_log(self):
        self.log_mark = len(self.gh.stderr())

    def new_log(self):
        """Gatehouse's log since the mark; logfmt escapes quotes inside msg="...",
        so this compares against plain text."""
        return self.gh.stderr()[self.log_mark:].replace('\\"', '"')
