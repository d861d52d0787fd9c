/**
 * Wires the OpenTelemetry SDK from the standard OTEL_* environment variables. Exporting is on only
 * when an OTLP endpoint is configured; otherwise nothing is registered and the API stays a no-op.
 * The SDK itself reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG) and
 * OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout).
 */
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

export interface TracingSetup {
  enabled: boolean;
  shutdown(): Promise<void>;
}

/** True when the environment names an OTLP trace endpoint. */
export function otlpConfigured(env: Record<string, string | undefined>): boolean {
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) && env.OTEL_TRACES_EXPORTER !== 'none' && env.OTEL_SDK_DISABLED !== 'true';
}

/** `serviceName` applies unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name the service. */
export function startTracing(options: { enabled: boolean; serviceName: string; serviceVersion: string; processors?: SpanProcessor[] }): TracingSetup {
  if (!options.enabled && !options.processors) return { enabled: false, shutdown: async () => {} };
  const fromEnv = detectResources({ detectors: [envDetector] });
  const named = fromEnv.attributes['service.name'] ? {} : { 'service.name': options.serviceName };
  const provider = new NodeTracerProvider({
    resource: defaultResource().merge(resourceFromAttributes({ ...named, 'service.version': options.serviceVersion })).merge(fromEnv),
    spanProcessors: options.processors ?? [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register();
  return { enabled: true, shutdown: () => provider.shutdown() };
}
