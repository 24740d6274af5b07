/* authn/keys.c - turns PEM private keys into cjose JWKs through OpenSSL 3's
 * parameter API, generates the assertion key on first start, computes RFC 7638
 * key ids, and loads the 32-byte keys that seal cookies and refresh tokens. */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "codec.h"

/* A private key readable by group or others is a finding, not a fatal error. */
static void warn_if_exposed(int fd, const char *path)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0) {
        log_warn("authn", "%s is readable by group or others (mode %03o); use chmod 600", path,
                 (unsigned)(st.st_mode & 0777));
    }
}

static int bn_param(const EVP_PKEY *pk, const char *name, unsigned char **buf, size_t *len,
                    size_t pad)
{
    BIGNUM *bn = NULL;
    if (EVP_PKEY_get_bn_param(pk, name, &bn) != 1) {
        return -1;
    }
    size_t n = pad ? pad : (size_t)BN_num_bytes(bn);
    *buf = OPENSSL_secure_zalloc(n ? n : 1);
    int rc = BN_bn2binpad(bn, *buf, (int)n) < 0 ? -1 : 0;
    *len = n;
    BN_clear_free(bn);
    return rc;
}

static cjose_jwk_t *ec_to_jwk(const EVP_PKEY *pk, const char **alg, struct err *err)
{
    char group[64] = "";
    size_t glen = 0;
    cjose_jwk_ec_keyspec spec = { 0 };
    cjose_jwk_t *jwk = NULL;
    cjose_err cerr;
    size_t csize;

    EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen);
    if (strcmp(group, "prime256v1") == 0) {
        spec.crv = CJOSE_JWK_EC_P_256;
        *alg = "ES256";
        csize = 32;
    } else if (strcmp(group, "secp384r1") == 0) {
        spec.crv = CJOSE_JWK_EC_P_384;
        *alg = "ES384";
        csize = 48;
    } else {
        err_set(err, ERR_CRYPTO, "EC key on curve \"%s\" is not supported (use P-256)", group);
        return NULL;
    }
    if (bn_param(pk, OSSL_PKEY_PARAM_PRIV_KEY, &spec.d, &spec.dlen, csize) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_X, &spec.x, &spec.xlen, csize) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_Y, &spec.y, &spec.ylen, csize) != 0) {
        err_set(err, ERR_CRYPTO, "cannot read the EC key parameters");
        goto out;
    }
    jwk = cjose_jwk_create_EC_spec(&spec, &cerr);
    if (jwk == NULL) {
        err_set(err, ERR_CRYPTO, "cjose refused the EC key: %s", cerr.message);
    }
out:
    OPENSSL_secure_clear_free(spec.d, spec.dlen);
    OPENSSL_secure_clear_free(spec.x, spec.xlen);
    OPENSSL_secure_clear_free(spec.y, spec.ylen);
    return jwk;
}

static cjose_jwk_t *rsa_to_jwk(const EVP_PKEY *pk, const char **alg, struct err *err)
{
    cjose_jwk_rsa_keyspec s = { 0 };
    cjose_jwk_t *jwk = NULL;
    cjose_err cerr;

    if (EVP_PKEY_get_bits(pk) < 2048) {
        err_set(err, ERR_CRYPTO, "RSA key has %d bits, at least 2048 are needed",
                EVP_PKEY_get_bits(pk));
        return NULL;
    }
    if (bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &s.n, &s.nlen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &s.e, &s.elen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_D, &s.d, &s.dlen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_FACTOR1, &s.p, &s.plen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_FACTOR2, &s.q, &s.qlen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_EXPONENT1, &s.dp, &s.dplen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_EXPONENT2, &s.dq, &s.dqlen, 0) != 0 ||
        bn_param(pk, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, &s.qi, &s.qilen, 0) != 0) {
        err_set(err, ERR_CRYPTO, "cannot read the RSA key parameters");
        goto out;
    }
    *alg = "RS256";
    jwk = cjose_jwk_create_RSA_spec(&s, &cerr);
    if (jwk == NULL) {
        err_set(err, ERR_CRYPTO, "cjose refused the RSA key: %s", cerr.message);
    }
out:
    OPENSSL_secure_clear_free(s.n, s.nlen);
    OPENSSL_secure_clear_free(s.e, s.elen);
    OPENSSL_secure_clear_free(s.d, s.dlen);
    OPENSSL_secure_clear_free(s.p, s.plen);
    OPENSSL_secure_clear_free(s.q, s.qlen);
    OPENSSL_secure_clear_free(s.dp, s.dplen);
    OPENSSL_secure_clear_free(s.dq, s.dqlen);
    OPENSSL_secure_clear_free(s.qi, s.qilen);
    return jwk;
}

/* With a NULL callback OpenSSL would ask for a passphrase on the terminal and
 * block the server; an encrypted key is refused instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    *(bool *)u = true;
    return -1;
}

cjose_jwk_t *keys_parse_pem(struct str pem, const char **alg, struct err *err)
{
    BIO *bio = BIO_new_mem_buf(pem.p, (int)pem.len);
    bool asked = false;
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, &asked) : NULL;
    cjose_jwk_t *jwk = NULL;

    BIO_free(bio);
    if (pk == NULL) {
        err_set(err, ERR_CRYPTO,
                asked ? "encrypted private keys are not supported (store it "
                        "without a passphrase, mode 0600)"
                      : "not a PEM private key");
        return NULL;
    }
    if (EVP_PKEY_is_a(pk, "EC")) {
        jwk = ec_to_jwk(pk, alg, err);
    } else if (EVP_PKEY_is_a(pk, "RSA")) {
        jwk = rsa_to_jwk(pk, alg, err);
    } else {
        err_set(err, ERR_CRYPTO, "private key type %s is not supported",
                EVP_PKEY_get0_type_name(pk));
    }
    EVP_PKEY_free(pk);
    return jwk;
}

cjose_jwk_t *keys_load_pem(const char *path, const char **alg, struct err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        warn_if_exposed(fd, path);
        close(fd);
    }
    size_t n = 0;
    char *pem = conf_read_file(path, 64 * 1024, &n, err);
    if (pem == NULL) {
        return NULL;
    }
    cjose_jwk_t *jwk = keys_parse_pem((struct str){ pem, n }, alg, err);
    if (jwk == NULL && err != NULL) {
        char msg[sizeof err->msg];
        memcpy(msg, err->msg, sizeof msg);
        err_set(err, err->code, "%.100s: %.150s", path, msg);
    }
    OPENSSL_cleanse(pem, n);
    free(pem);
    return jwk;
}

int keys_generate_p256_pem(const char *path, struct err *err)
{
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (pk == NULL) {
        return err_set(err, ERR_CRYPTO, "cannot generate a P-256 key");
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        EVP_PKEY_free(pk);
        return err_set(err, ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    FILE *f = fdopen(fd, "w");
    int ok = f != NULL && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) == 1;
    if (f != NULL) {
        ok = fclose(f) == 0 && ok;
    } else {
        close(fd);
    }
    EVP_PKEY_free(pk);
    if (!ok) {
        unlink(path);
        return err_set(err, ERR_IO, "cannot write %s", path);
    }
    return 0;
}

char *keys_thumbprint(const cjose_jwk_t *jwk, struct err *err)
{
    cjose_err cerr;
    char *pub = cjose_jwk_to_json(jwk, false, &cerr);
    json_error_t jerr;
    json_t *j = pub ? json_loads(pub, 0, &jerr) : NULL;
    char *out = NULL;
    char *canon = NULL;

    free(pub);
    if (j == NULL) {
        err_set(err, ERR_CRYPTO, "cannot export the public key");
        return NULL;
    }
    /* RFC 7638 §3.2: only the required members, lexicographic order, no spaces. */
    const char *kty = json_string_value(json_object_get(j, "kty"));
    if (kty != NULL && strcmp(kty, "EC") == 0) {
        canon = xasprintf("{\"crv\":\"%s\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
                          json_string_value(json_object_get(j, "crv")),
                          json_string_value(json_object_get(j, "x")),
                          json_string_value(json_object_get(j, "y")));
    } else if (kty != NULL && strcmp(kty, "RSA") == 0) {
        canon = xasprintf("{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}",
                          json_string_value(json_object_get(j, "e")),
                          json_string_value(json_object_get(j, "n")));
    } else {
        err_set(err, ERR_CRYPTO, "no thumbprint for key type %s", kty ? kty : "?");
        goto done;
    }
    unsigned char md[32];
    codec_sha256(canon, strlen(canon), md);
    out = codec_b64url_encode(md, sizeof md);
done:
    free(canon);
    json_decref(j);
    return out;
}

int keys_load_secret32(const char *path, bool create, unsigned char out[32], struct err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        unsigned char k[32];
        if (!codec_rand_bytes(k, sizeof k)) {
            return err_set(err, ERR_CRYPTO, "no randomness for %s", path);
        }
        int wfd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (wfd >= 0) {
            ssize_t w = write(wfd, k, sizeof k);
            int crc = close(wfd);
            if (w != (ssize_t)sizeof k || crc != 0) {
                unlink(path);
                OPENSSL_cleanse(k, sizeof k);
                return err_set(err, ERR_IO, "cannot write %s", path);
            }
        } else if (errno != EEXIST) {
            OPENSSL_cleanse(k, sizeof k);
            return err_set(err, ERR_IO, "cannot create %s: %s", path, strerror(errno));
        }
        OPENSSL_cleanse(k, sizeof k);
        /* Another process may have won the race: read whatever is on disk. */
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        return err_set(err, ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    warn_if_exposed(fd, path);
    unsigned char buf[33];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n != 32) {
        OPENSSL_cleanse(buf, sizeof buf);
        return err_set(err, ERR_CONFIG, "%s must hold exactly 32 bytes", path);
    }
    memcpy(out, buf, 32);
    OPENSSL_cleanse(buf, sizeof buf);
    return 0;
}
