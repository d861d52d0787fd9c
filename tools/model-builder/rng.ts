/**
 * Deterministic pseudo-random numbers for weight generation.
 *
 * Every tensor gets its own stream, seeded from (seed, tensor name), so a tensor's values do not
 * depend on which other tensors were generated before it. mulberry32 + Box-Muller; Math.log/cos/sqrt
 * are deterministic in V8 (fdlibm ports), so the same seed gives the same bytes on every machine.
 */

/** FNV-1a 32-bit hash of a string (UTF-16 code units). */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: returns uniform floats in the open interval (0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const x = (t ^ (t >>> 14)) >>> 0;
    return (x + 0.5) / 4294967296;
  };
}

/** A uniform stream dedicated to one named tensor. */
export function streamFor(seed: number, name: string): () => number {
  // Mix the seed in twice so that seeds differing in few bits still give unrelated streams.
  const h = hashString(`${seed >>> 0}:${name}`) ^ Math.imul((seed >>> 0) + 0x9e3779b9, 0x85ebca6b);
  const u = mulberry32(h >>> 0);
  // Burn a few values: mulberry32's first outputs are weakly correlated with the seed.
  for (let i = 0; i < 4; i++) u();
  return u;
}

/** Fill a Float32Array with N(mean, std^2) values (Box-Muller, both outputs used). */
export function gaussian(seed: number, name: string, n: number, std: number, mean = 0): Float32Array {
  const u = streamFor(seed, name);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const th = 2 * Math.PI * u();
    out[i] = mean + std * r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = mean + std * r * Math.sin(th);
  }
  return out;
}
