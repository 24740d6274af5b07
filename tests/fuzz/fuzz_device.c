/* Fuzz target for authn/device.c: any bytes as a DER client certificate (what a
 * TLS peer sends). Invariants: a certificate OpenSSL parses yields a 64-hex
 * fingerprint, NUL-terminated fields without control bytes in the SANs, and the
 * same answer twice; unparseable input is refused by OpenSSL before us. */
#include <string.h>

#include <openssl/x509.h>

#include "authn/device.h"

#include "replay.h"

static bool clean(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n == cap) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            return false;
        }
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, (long)size);
    if (!x) {
        return 0;
    }
    struct device_identity a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int rc = device_identity_from_x509(x, &a);
    CHECK(rc == 0);
    CHECK(strlen(a.fingerprint) == 64);
    CHECK(clean(a.san, sizeof a.san) && clean(a.sans, sizeof a.sans));
    CHECK(strnlen(a.subject, sizeof a.subject) < sizeof a.subject);
    CHECK(strnlen(a.serial, sizeof a.serial) < sizeof a.serial);
    CHECK(device_identity_from_x509(x, &b) == 0 && memcmp(&a, &b, sizeof a) == 0);
    X509_free(x);
    return 0;
}
