import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, configSchema, DEFAULT_MODEL_DIR, defaultKvCacheBytes, envName, flagName, helpText, loadConfig, parseArgs, parseByteSize } from '../../src/config.ts';

function configError(fn: () => unknown, patterns: RegExp[]): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${String(error)}`);
    assert.equal(error.name, 'ConfigError');
    for (const pattern of patterns) assert.match(error.message, pattern);
    return true;
  });
}

describe('config names', () => {
  test('camelCase keys map to UPPER_SNAKE env names and --kebab flags', () => {
    assert.equal(envName('kvCacheBytes'), 'KV_CACHE_BYTES');
    assert.equal(flagName('kvCacheBytes'), '--kv-cache-bytes');
    assert.equal(envName('int8AfterSeconds'), 'INT8_AFTER_SECONDS');
    assert.equal(flagName('int8AfterSeconds'), '--int8-after-seconds');
    assert.equal(envName('port'), 'PORT');
    assert.equal(flagName('port'), '--port');
  });
});

describe('loadConfig', () => {
  test('defaults with an empty environment', () => {
    const config = loadConfig({});
    assert.equal(config.port, 8080);
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.model, DEFAULT_MODEL_DIR);
    assert.equal(config.executionProvider, 'cpu');
    assert.equal(config.executionProviderFallback, false);
    assert.equal(config.kvCacheBytes, undefined);
    assert.equal(config.kvBlockTokens, 16);
    assert.equal(config.maxBodyBytes, 4 * 1024 * 1024);
    assert.deepEqual(config.apiKeys, []);
    assert.equal(config.windowStrategy, 'auto');
    assert.equal(config.logLevel, 'info');
  });

  test('environment variables set values, coerced to their types', () => {
    const config = loadConfig({
      PORT: '9000',
      HOST: '127.0.0.1',
      MAX_BATCH_SIZE: '4',
      QUEUE_TIMEOUT_SECONDS: '2.5',
      WINDOW_STRATEGY: 'recompute',
      API_KEYS: 'k1, k2,,k3 ',
      LOG_LEVEL: 'debug',
      UNRELATED: 'ignored',
    });
    assert.equal(config.port, 9000);
    assert.equal(config.host, '127.0.0.1');
    assert.equal(config.maxBatchSize, 4);
    assert.equal(config.queueTimeoutSeconds, 2.5);
    assert.equal(config.windowStrategy, 'recompute');
    assert.deepEqual(config.apiKeys, ['k1', 'k2', 'k3']);
    assert.equal(config.logLevel, 'debug');
  });

  test('empty environment variables count as unset', () => {
    assert.equal(loadConfig({ PORT: '', MODEL: '' }).port, 8080);
    assert.equal(loadConfig({ MODEL: '' }).model, DEFAULT_MODEL_DIR);
  });

  test('flags set values in both --flag value and --flag=value forms, and win over the environment', () => {
    const config = loadConfig({ PORT: '9000', MAX_QUEUE: '5' }, ['--port', '7000', '--max-queue=9', '--kv-cache-bytes', '1GiB']);
    assert.equal(config.port, 7000);
    assert.equal(config.maxQueue, 9);
    assert.equal(config.kvCacheBytes, 1024 ** 3);
    // Environment values that no flag overrides stay.
    assert.equal(loadConfig({ PORT: '9000' }, ['--max-queue', '1']).port, 9000);
  });

  test('MODEL_DIR is an alias of MODEL; MODEL and --model win over it', () => {
    assert.equal(loadConfig({ MODEL_DIR: '/models/a' }).model, '/models/a');
    assert.equal(loadConfig({ MODEL_DIR: '/models/a', MODEL: '/models/b' }).model, '/models/b');
    assert.equal(loadConfig({ MODEL_DIR: '/models/a' }, ['--model', '/models/c']).model, '/models/c');
  });

  test(
    'an empty MODEL does not hide MODEL_DIR (empty variables count as unset)',
    () => {
      assert.equal(loadConfig({ MODEL: '', MODEL_DIR: '/models/a' }).model, '/models/a');
    },
  );

  test('byte sizes: units, decimals, exponents and raw numbers', () => {
    const bytes = (value: string) => loadConfig({ KV_CACHE_BYTES: value }).kvCacheBytes;
    assert.equal(bytes('2GiB'), 2 * 1024 ** 3);
    assert.equal(bytes('512MB'), 512e6);
    assert.equal(bytes('512mb'), 512e6);
    assert.equal(bytes('64 MiB'), 64 * 1024 ** 2);
    assert.equal(bytes('1.5KiB'), 1536);
    assert.equal(bytes('1073741824'), 1073741824);
    assert.equal(bytes('1e9'), 1e9);
    assert.equal(bytes('3k'), 3000);
    assert.equal(bytes('1TB'), 1e12);
    assert.equal(loadConfig({ MAX_BODY_BYTES: '1MiB' }).maxBodyBytes, 1024 * 1024);
    assert.equal(parseByteSize('10 B'), 10);
    assert.equal(parseByteSize('12 parsecs'), null);
    assert.equal(parseByteSize('-5MB'), null);
    assert.equal(parseByteSize(''), null);
  });

  test('invalid byte sizes are refused naming the env var and the flag', () => {
    for (const value of ['lots', '-1GiB', '0', '5 XB', '0.1']) {
      configError(() => loadConfig({ KV_CACHE_BYTES: value }), [/KV_CACHE_BYTES/, /--kv-cache-bytes/, /is not a size/]);
    }
  });

  test('booleans: true/false/1/0/yes/no and a bare flag', () => {
    for (const [value, expected] of [['true', true], ['1', true], ['yes', true], ['false', false], ['0', false], ['no', false]] as const) {
      assert.equal(loadConfig({ EXECUTION_PROVIDER_FALLBACK: value }).executionProviderFallback, expected, value);
      assert.equal(loadConfig({}, [`--metrics-require-key=${value}`]).metricsRequireKey, expected, value);
    }
    assert.equal(loadConfig({}, ['--execution-provider-fallback']).executionProviderFallback, true);
    assert.equal(loadConfig({}, ['--execution-provider-fallback', '--port', '1234']).executionProviderFallback, true);
    assert.equal(loadConfig({}, ['--execution-provider-fallback', '--port', '1234']).port, 1234);
    assert.equal(loadConfig({ METRICS_REQUIRE_KEY: 'true' }, ['--metrics-require-key', 'false']).metricsRequireKey, false);
    configError(() => loadConfig({ METRICS_REQUIRE_KEY: 'maybe' }), [/METRICS_REQUIRE_KEY \/ --metrics-require-key/]);
  });

  test('invalid values give a ConfigError naming the env var and the flag of each problem', () => {
    configError(() => loadConfig({ PORT: 'eighty' }), [/invalid configuration/, /PORT \/ --port/]);
    configError(() => loadConfig({ PORT: '70000' }), [/PORT \/ --port/]);
    configError(() => loadConfig({ PORT: '80.5' }), [/PORT \/ --port/]);
    configError(() => loadConfig({}, ['--max-batch-size', '0']), [/MAX_BATCH_SIZE \/ --max-batch-size/]);
    configError(() => loadConfig({ EXECUTION_PROVIDER: 'tpu' }), [/EXECUTION_PROVIDER \/ --execution-provider/]);
    configError(() => loadConfig({ SINK_TOKENS: '-1' }), [/SINK_TOKENS \/ --sink-tokens/]);
    configError(() => loadConfig({}, ['--model', '']), [/MODEL \/ --model/]);
    // Several problems are all listed.
    configError(() => loadConfig({ PORT: 'x', LOG_LEVEL: 'loud', MAX_QUEUE: '-3' }), [/PORT \/ --port/, /LOG_LEVEL \/ --log-level/, /MAX_QUEUE \/ --max-queue/]);
  });

  test(
    'a numeric flag given without a value is an error, not the number 1',
    () => {
      configError(() => loadConfig({}, ['--port']), [/PORT \/ --port/]);
      configError(() => loadConfig({}, ['--max-batch-size', '--port', '80']), [/MAX_BATCH_SIZE \/ --max-batch-size/]);
    },
  );

  test(
    'an empty or blank numeric value is an error (or unset), not the number 0',
    () => {
      const port = (run: () => ReturnType<typeof loadConfig>) => {
        try {
          return run().port;
        } catch (error) {
          assert.ok(error instanceof ConfigError, 'error instanceof ConfigError');
          return 'error';
        }
      };
      assert.notEqual(port(() => loadConfig({}, ['--port='])), 0);
      assert.notEqual(port(() => loadConfig({ PORT: ' ' })), 0);
    },
  );

  test('unknown flags and positional arguments are refused with a pointer to --help', () => {
    configError(() => loadConfig({}, ['--prot', '80']), [/unknown option --prot/, /--help/]);
    configError(() => loadConfig({}, ['models/x']), [/unknown option models\/x/]);
    configError(() => parseArgs(['--port=80', '--bogus=1']), [/unknown option --bogus/]);
  });

  test('parseArgs keeps the raw strings; values may contain "="', () => {
    assert.deepEqual(parseArgs(['--api-keys=a=b,c', '--host', 'localhost', '--metrics-require-key']), {
      apiKeys: 'a=b,c',
      host: 'localhost',
      metricsRequireKey: true,
    });
  });

  test('defaultKvCacheBytes: half the free memory, between 64 MiB and 64 GiB', () => {
    assert.equal(defaultKvCacheBytes(8 * 1024 ** 3), 4 * 1024 ** 3);
    assert.equal(defaultKvCacheBytes(10 * 1024 ** 2), 64 * 1024 ** 2);
    assert.equal(defaultKvCacheBytes(1024 ** 4), 64 * 1024 ** 3);
    assert.equal(defaultKvCacheBytes(3), 64 * 1024 ** 2);
  });
});

describe('helpText', () => {
  test('lists every option with its flag, env var and default', () => {
    const help = helpText();
    const keys = Object.keys(configSchema.shape);
    assert.ok(keys.length >= 30, 'keys.length >= 30');
    const lines = help.split('\n');
    for (const key of keys) {
      const line = lines.find((l) => l.trimStart().startsWith(`${flagName(key)} `));
      assert.ok(line, `no line for ${flagName(key)}`);
      assert.ok(line.includes(envName(key)), `${flagName(key)} line lacks ${envName(key)}`);
    }
    assert.match(help, /--port\s+PORT \(default 8080\)/);
    assert.match(help, /--model\s+MODEL or MODEL_DIR \(default "models\/warmkv-chat"\)/);
    assert.match(help, /--kv-block-tokens\s+KV_BLOCK_TOKENS \(default 16\)/);
    assert.doesNotMatch(lines.find((l) => l.includes('--kv-cache-bytes'))!, /default/, 'no default shown for an optional value');
    // Every option line is for a real flag: the help parses back.
    for (const line of lines.filter((l) => l.startsWith('  --'))) parseArgs([line.trim().split(/\s+/)[0] + '=1']);
  });
});

describe('HTTP connection settings and CORS', () => {
  test('defaults: 10 s for headers, 60 s for the request, 5 s keep-alive, 1024 connections, no CORS', () => {
    const config = loadConfig({});
    assert.equal(config.headersTimeoutSeconds, 10);
    assert.equal(config.requestTimeoutSeconds, 60);
    assert.equal(config.keepAliveTimeoutSeconds, 5);
    assert.equal(config.maxConnections, 1024);
    assert.deepEqual(config.corsOrigins, []);
  });

  test('set by env and flag; CORS_ORIGINS is a comma-separated list; --help lists them', () => {
    const config = loadConfig({ CORS_ORIGINS: 'https://a.example, https://b.example', MAX_CONNECTIONS: '0' }, ['--headers-timeout-seconds', '0.5', '--request-timeout-seconds=2']);
    assert.deepEqual(config.corsOrigins, ['https://a.example', 'https://b.example']);
    assert.equal(config.maxConnections, 0);
    assert.equal(config.headersTimeoutSeconds, 0.5);
    assert.equal(config.requestTimeoutSeconds, 2);
    const help = helpText();
    for (const flag of ['--cors-origins', '--headers-timeout-seconds', '--request-timeout-seconds', '--keep-alive-timeout-seconds', '--max-connections']) assert.match(help, new RegExp(`${flag}\\s`));
  });

  test('a headers timeout longer than the request timeout, or a negative one, is refused', () => {
    configError(() => loadConfig({ HEADERS_TIMEOUT_SECONDS: '30', REQUEST_TIMEOUT_SECONDS: '20' }), [/HEADERS_TIMEOUT_SECONDS/, /REQUEST_TIMEOUT_SECONDS \(20\)/]);
    configError(() => loadConfig({ KEEP_ALIVE_TIMEOUT_SECONDS: '-1' }), [/KEEP_ALIVE_TIMEOUT_SECONDS \/ --keep-alive-timeout-seconds/]);
    assert.equal(loadConfig({ HEADERS_TIMEOUT_SECONDS: '30', REQUEST_TIMEOUT_SECONDS: '0' }).headersTimeoutSeconds, 30, 'no request timeout: any headers timeout');
  });
});
