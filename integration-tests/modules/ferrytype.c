/* ferrytype: a tiny Redis module for ferry's integration tests.
 *
 * It registers one module data type, so that a test can make keys whose
 * values are module values (RDB type 7, RDB_TYPE_MODULE_2) and check that
 * ferry carries them over as DUMP/RESTORE payloads, byte for byte, to a
 * server that has the module loaded too.
 *
 * Module name: "ferrytype". Data type: "ferrytyp1" (module type names are
 * exactly 9 characters), encoding version 1. A value is a byte string plus an
 * unsigned 64-bit counter.
 *
 * Commands:
 *   FERRYTYPE.SET key value        write: creates the value, or replaces the
 *                                  bytes of the existing one; the counter is
 *                                  the number of SETs done on the key (1 for a
 *                                  new key). Replies with the counter (integer).
 *                                  Replicated verbatim.
 *   FERRYTYPE.PUT key value count  write: sets bytes and counter exactly (no
 *                                  increment). Replies +OK. This is what an AOF
 *                                  rewrite emits, so that the counter survives.
 *   FERRYTYPE.GET key              readonly: replies [value, counter], or nil
 *                                  when the key does not exist.
 * A key holding another type gives the usual WRONGTYPE error.
 *
 * RDB encoding of a value (encver 1): the bytes (SaveStringBuffer), then the
 * counter (SaveUnsigned).
 *
 * Build: cc -shared -fPIC -O2 -o ferrytype.so ferrytype.c
 * Load:  redis-server --loadmodule /path/to/ferrytype.so */

#include "redismodule.h"

#include <string.h>

#define FERRYTYPE_ENCVER 1

static RedisModuleType *FerryType;

typedef struct FerryValue {
    char *buf;          /* RedisModule_Alloc'ed, never NULL. */
    size_t len;
    uint64_t counter;
} FerryValue;

static char *copy_bytes(const char *src, size_t len) {
    /* One byte more, so that an empty value still gets its own allocation. */
    char *buf = RedisModule_Alloc(len + 1);
    if (len) memcpy(buf, src, len);
    buf[len] = '\0';
    return buf;
}

static FerryValue *value_new(const char *src, size_t len, uint64_t counter) {
    FerryValue *v = RedisModule_Alloc(sizeof(*v));
    v->buf = copy_bytes(src, len);
    v->len = len;
    v->counter = counter;
    return v;
}

static void value_free(void *value) {
    FerryValue *v = value;
    if (v == NULL) return;
    RedisModule_Free(v->buf);
    RedisModule_Free(v);
}

/* Opens argv[1] for writing. Returns NULL after replying WRONGTYPE when the key
 * holds a value of another type; *existing is the key's FerryValue or NULL. */
static RedisModuleKey *open_for_write(RedisModuleCtx *ctx, RedisModuleString *keyname, FerryValue **existing) {
    RedisModuleKey *key = RedisModule_OpenKey(ctx, keyname, REDISMODULE_READ | REDISMODULE_WRITE);
    int type = RedisModule_KeyType(key);
    *existing = NULL;
    if (type != REDISMODULE_KEYTYPE_EMPTY) {
        if (RedisModule_ModuleTypeGetType(key) != FerryType) {
            RedisModule_CloseKey(key);
            RedisModule_ReplyWithError(ctx, REDISMODULE_ERRORMSG_WRONGTYPE);
            return NULL;
        }
        *existing = RedisModule_ModuleTypeGetValue(key);
    }
    return key;
}

/* Stores bytes and counter in the key: in place when it already holds one. */
static void store(RedisModuleKey *key, FerryValue *existing, const char *src, size_t len, uint64_t counter) {
    if (existing) {
        char *buf = copy_bytes(src, len);
        RedisModule_Free(existing->buf);
        existing->buf = buf;
        existing->len = len;
        existing->counter = counter;
    } else {
        RedisModule_ModuleTypeSetValue(key, FerryType, value_new(src, len, counter));
    }
}

/* FERRYTYPE.SET key value */
static int cmd_set(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 3) return RedisModule_WrongArity(ctx);
    FerryValue *existing;
    RedisModuleKey *key = open_for_write(ctx, argv[1], &existing);
    if (key == NULL) return REDISMODULE_OK;
    size_t len;
    const char *src = RedisModule_StringPtrLen(argv[2], &len);
    uint64_t counter = existing ? existing->counter + 1 : 1;
    store(key, existing, src, len, counter);
    RedisModule_CloseKey(key);
    RedisModule_ReplyWithLongLong(ctx, (long long)counter);
    RedisModule_ReplicateVerbatim(ctx);
    return REDISMODULE_OK;
}

/* FERRYTYPE.PUT key value counter */
static int cmd_put(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 4) return RedisModule_WrongArity(ctx);
    long long counter;
    if (RedisModule_StringToLongLong(argv[3], &counter) != REDISMODULE_OK || counter < 0) {
        return RedisModule_ReplyWithError(ctx, "ERR counter is not a non-negative integer");
    }
    FerryValue *existing;
    RedisModuleKey *key = open_for_write(ctx, argv[1], &existing);
    if (key == NULL) return REDISMODULE_OK;
    size_t len;
    const char *src = RedisModule_StringPtrLen(argv[2], &len);
    store(key, existing, src, len, (uint64_t)counter);
    RedisModule_CloseKey(key);
    RedisModule_ReplyWithSimpleString(ctx, "OK");
    RedisModule_ReplicateVerbatim(ctx);
    return REDISMODULE_OK;
}

/* FERRYTYPE.GET key */
static int cmd_get(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ);
    int type = RedisModule_KeyType(key);
    if (type == REDISMODULE_KEYTYPE_EMPTY) {
        RedisModule_ReplyWithNull(ctx);
    } else if (RedisModule_ModuleTypeGetType(key) != FerryType) {
        RedisModule_ReplyWithError(ctx, REDISMODULE_ERRORMSG_WRONGTYPE);
    } else {
        FerryValue *v = RedisModule_ModuleTypeGetValue(key);
        RedisModule_ReplyWithArray(ctx, 2);
        RedisModule_ReplyWithStringBuffer(ctx, v->buf, v->len);
        RedisModule_ReplyWithLongLong(ctx, (long long)v->counter);
    }
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

static void *type_rdb_load(RedisModuleIO *rdb, int encver) {
    if (encver != FERRYTYPE_ENCVER) {
        RedisModule_LogIOError(rdb, REDISMODULE_LOGLEVEL_WARNING, "ferrytyp1: cannot load encoding version %d",
                               encver);
        return NULL;
    }
    size_t len = 0;
    char *loaded = RedisModule_LoadStringBuffer(rdb, &len);
    uint64_t counter = RedisModule_LoadUnsigned(rdb);
    FerryValue *v = value_new(loaded ? loaded : "", loaded ? len : 0, counter);
    if (loaded) RedisModule_Free(loaded);
    return v;
}

static void type_rdb_save(RedisModuleIO *rdb, void *value) {
    FerryValue *v = value;
    RedisModule_SaveStringBuffer(rdb, v->buf, v->len);
    RedisModule_SaveUnsigned(rdb, v->counter);
}

/* AOF rewrite: FERRYTYPE.PUT key value counter, which restores the counter
 * exactly (FERRYTYPE.SET would reset it to 1). */
static void type_aof_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
    FerryValue *v = value;
    RedisModule_EmitAOF(aof, "FERRYTYPE.PUT", "sbl", key, v->buf, v->len, (long long)v->counter);
}

static size_t type_mem_usage(const void *value) {
    const FerryValue *v = value;
    return sizeof(*v) + v->len + 1;
}

/* For DEBUG DIGEST / DEBUG DIGEST-VALUE. */
static void type_digest(RedisModuleDigest *md, void *value) {
    FerryValue *v = value;
    RedisModule_DigestAddStringBuffer(md, v->buf, v->len);
    RedisModule_DigestAddLongLong(md, (long long)v->counter);
    RedisModule_DigestEndSequence(md);
}

/* For COPY. */
static void *type_copy(RedisModuleString *fromkey, RedisModuleString *tokey, const void *value) {
    REDISMODULE_NOT_USED(fromkey);
    REDISMODULE_NOT_USED(tokey);
    const FerryValue *v = value;
    return value_new(v->buf, v->len, v->counter);
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    REDISMODULE_NOT_USED(argv);
    REDISMODULE_NOT_USED(argc);
    if (RedisModule_Init(ctx, "ferrytype", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR) return REDISMODULE_ERR;

    RedisModuleTypeMethods tm = {
        .version = REDISMODULE_TYPE_METHOD_VERSION,
        .rdb_load = type_rdb_load,
        .rdb_save = type_rdb_save,
        .aof_rewrite = type_aof_rewrite,
        .mem_usage = type_mem_usage,
        .digest = type_digest,
        .free = value_free,
        .copy = type_copy,
    };
    FerryType = RedisModule_CreateDataType(ctx, "ferrytyp1", FERRYTYPE_ENCVER, &tm);
    if (FerryType == NULL) return REDISMODULE_ERR;

    if (RedisModule_CreateCommand(ctx, "ferrytype.set", cmd_set, "write deny-oom", 1, 1, 1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "ferrytype.put", cmd_put, "write deny-oom", 1, 1, 1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "ferrytype.get", cmd_get, "readonly fast", 1, 1, 1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return REDISMODULE_OK;
}
