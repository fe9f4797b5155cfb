/* Users of vigil-authd: the auth.users table, registration and password
 * authentication. Knows nothing of HTTP.
 *
 * Thread-safety: every function may be called from any thread; state lives
 * in the pool and the hasher. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "pg.h"

struct password_hasher;

#define USERNAME_MIN_LENGTH 3
#define USERNAME_MAX_LENGTH 64

extern const struct pg_schema authd_schema;
#define AUTHD_SCHEMA "auth"

/* A username is 3..64 bytes of [A-Za-z0-9_.-]. Returns 0 or -EINVAL. */
int users_validate_username(const char *username);

/* Create a user with a freshly hashed password. Returns 0 and the new id,
 * -EEXIST when the name is taken, -EINVAL for an invalid name or password,
 * -EBUSY when the hasher is saturated, or a negative errno from the pool. */
int users_register(struct pg_pool *pool, struct password_hasher *hasher, const char *username,
                   const char *password, int64_t *ret_user_id);

/* Check a username and password. Returns 0 and the id, -EACCES for an
 * unknown user or a wrong password (indistinguishable, same cost), -EBUSY,
 * or a negative errno from the pool. */
int users_authenticate(struct pg_pool *pool, struct password_hasher *hasher, const char *username,
                       const char *password, int64_t *ret_user_id);

/* Number of registered users. */
int users_count(struct pg_pool *pool, int64_t *ret_count);
