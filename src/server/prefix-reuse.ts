/**
 * Stateless completions and chat on the automatic prefix cache (cache/prefix-cache.ts): the job runs
 * on the prefix entry its prompt claims, as a request on a named session would (the engine reuses the
 * entry's matching prefix), while the client still sees a stateless call: no session id in the
 * answer, nothing superseded, no per-key session limit. Jobs with several engine requests (n > 1,
 * several prompts) keep their one-off caches, and so does a prompt longer than a session may hold
 * (MAX_SESSION_TOKENS, which stateless requests are not subject to).
 */
import type { Serving } from '../serving.ts';
import type { Admission, Admitted } from './admission.ts';
import type { GenerationJob } from './generation.ts';

/** The job on its claimed entry, and an admission whose submit and refusal also let the claim go. */
export function onPrefixEntry(parts: Serving, admission: Admission, admitted: Admitted, job: GenerationJob): { job: GenerationJob; admitted: Admitted } {
  const cache = parts.prefixCache;
  if (!cache || job.request.sessionId !== undefined || job.shared || job.extraChoices) return { job, admitted };
  if (job.request.input.length > admission.sessionTokenLimit(parts)) return { job, admitted };
  const claim = cache.claim(job.request.owner, job.request.input);
  return {
    job: { ...job, prefixEntry: true, request: { ...job.request, sessionId: claim.session.id, onUnknownSession: 'fail' } },
    admitted: {
      created: admitted.created,
      async submit(request) {
        try {
          return await admitted.submit(request);
        } finally {
          claim.release();
        }
      },
      refused() {
        claim.release();
        admitted.refused();
      },
    },
  };
}
