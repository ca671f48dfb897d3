/* Redis' INCRBYFLOAT and HINCRBYFLOAT arithmetic: parse both numbers as C's long double
 * (strtold), add them, print the sum with "%.17Lf" and strip trailing zeros. Rust has no
 * long double, and Redis' replies show its precision (1000.1 becomes
 * 1000.09999999999999998 on x86-64), so the agent computes them as Redis does. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

#define MAX_LONG_DOUBLE_CHARS (5 * 1024)

/* As Redis' string2ld: 1 if `s` is a valid long double, stored in *out. */
static int parse(const char *s, size_t len, long double *out) {
    char buf[MAX_LONG_DOUBLE_CHARS];
    char *end;
    long double value;
    if (len == 0 || len >= sizeof(buf)) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    value = strtold(buf, &end);
    if (isspace((unsigned char)buf[0]) || end[0] != '\0' || (size_t)(end - buf) != len ||
        (errno == ERANGE &&
         (value == HUGE_VALL || value == -HUGE_VALL || fpclassify(value) == FP_ZERO)) ||
        errno == EINVAL || isnan(value))
        return 0;
    *out = value;
    return 1;
}

/* Adds `increment` to `current` (NULL: zero) and writes the sum to `out`. Returns the
 * length written, -1 if `current` is not a float, -2 if `increment` is not, -3 if the
 * sum is NaN or infinite, -4 if `out` is too small. */
long tandem_ld_add(const char *current, size_t current_len, const char *increment,
                   size_t increment_len, char *out, size_t out_len) {
    long double value = 0, incr;
    int written;
    if (current != NULL && !parse(current, current_len, &value)) return -1;
    if (!parse(increment, increment_len, &incr)) return -2;
    value += incr;
    if (isnan(value) || isinf(value)) return -3;
    written = snprintf(out, out_len, "%.17Lf", value);
    if (written < 0 || (size_t)written + 1 > out_len) return -4;
    if (strchr(out, '.') != NULL) {
        while (out[written - 1] == '0') written--;
        if (out[written - 1] == '.') written--;
    }
    if (written == 2 && out[0] == '-' && out[1] == '0') {
        out[0] = '0';
        written = 1;
    }
    return written;
}

/* 1 if `s` is a valid long double (Redis' check of an INCRBYFLOAT argument). */
int tandem_ld_valid(const char *s, size_t len) {
    long double value;
    return parse(s, len, &value);
}

/* Parses `s` as Redis parses a double. `strict` (a score, ZADD's increment): as
 * getDoubleFromObject, no leading space, no overflow or underflow to zero, not NaN.
 * Otherwise (a bound of a score range): as zslParseRange, whatever strtod reads up to
 * the end, not NaN. Returns 1 and stores the value, or 0. */
int tandem_parse_double(const char *s, size_t len, int strict, double *out) {
    char buf[MAX_LONG_DOUBLE_CHARS];
    char *end;
    double value;
    if (len >= sizeof(buf) || (strict && len == 0)) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    value = strtod(buf, &end);
    if (end[0] != '\0' || isnan(value)) return 0;
    if (strict && (isspace((unsigned char)buf[0]) || (size_t)(end - buf) != len ||
                   (errno == ERANGE &&
                    (value == HUGE_VAL || value == -HUGE_VAL || fpclassify(value) == FP_ZERO))))
        return 0;
    *out = value;
    return 1;
}
