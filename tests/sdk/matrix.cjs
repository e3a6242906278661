'use strict';
// The npm `openai` client against a running gateway: the calls a JavaScript user makes (an ensemble's label
// and annotation, a streamed answer, passthrough, models, files, batches, errors), printed as one JSON object.
// It only reports what it saw; tests/integration/test_sdk_matrix.py asserts on it.
// Env: GATEWAY_V1 (the gateway's /v1 URL), GATEWAY_KEY; NODE_PATH finds `openai` (tests/sdk/install.sh).

const OpenAI = require('openai');
const { toFile } = require('openai');

const LABELS = ['positive', 'negative'];
const client = new OpenAI({ baseURL: process.env.GATEWAY_V1, apiKey: process.env.GATEWAY_KEY, maxRetries: 0 });

// Unknown body fields (`labels`) are sent as they are: the SDK has no extra_body.
const ask = (text, model = 'crowd') => ({ model, messages: [{ role: 'user', content: text }], labels: LABELS });

function batchLine(customId, model, text) {
  return JSON.stringify({ custom_id: customId, method: 'POST', url: '/v1/chat/completions',
    body: { model, labels: LABELS, messages: [{ role: 'user', content: text }] } });
}

async function upload(lines) {
  return client.files.create({ file: await toFile(Buffer.from(lines.join('\n')), 'in.jsonl'), purpose: 'batch' });
}

async function all(page) {
  const items = [];
  for await (const item of page) items.push(item);
  return items;
}

async function failure(call) {
  try {
    await call();
    return { thrown: null };
  } catch (err) {
    return { thrown: err.constructor.name, status: err.status,
      code: err.code, param: err.param, should_retry: err.headers?.get('x-should-retry') ?? null,
      request_id: err.requestID ?? null };
  }
}

async function until(batchId, statuses) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const batch = await client.batches.retrieve(batchId);
    if (statuses.includes(batch.status) || Date.now() > deadline) return batch;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function chat() {
  const { data, response } = await client.chat.completions.create(ask('a good film')).withResponse();
  const raw = await client.chat.completions.create(ask('a good film')).asResponse();
  const rawBody = await raw.json();
  return { content: data.choices[0].message.content, annotation: data.annotation, usage: data.usage,
    confidence_header: response.headers.get('x-crowd-confidence'), request_id: data._request_id,
    raw_annotation: rawBody.annotation };
}

async function stream() {
  const { data, response } = await client.chat.completions.create(
    { ...ask('a bad film'), stream: true, stream_options: { include_usage: true } }).withResponse();
  const chunks = await all(data);
  return { content: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''),
    first_role: chunks[0].choices[0].delta.role, objects: [...new Set(chunks.map((c) => c.object))],
    ids: new Set(chunks.map((c) => c.id)).size,
    finish_reasons: chunks.filter((c) => c.choices.length).map((c) => c.choices[0].finish_reason),
    last_usage: chunks[chunks.length - 1].usage, annotations: chunks.filter((c) => c.annotation).map((c) => c.annotation),
    content_type: response.headers.get('content-type'), confidence_header: response.headers.get('x-crowd-confidence') };
}

async function passthrough() {
  const answer = await client.chat.completions.create({ model: 'sa', messages: [{ role: 'user', content: 'good' }] });
  const chunks = await all(await client.chat.completions.create(
    { model: 'sa', messages: [{ role: 'user', content: 'good' }], stream: true }));
  return { content: answer.choices[0].message.content, annotation: answer.annotation ?? null,
    streamed: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('') };
}

async function models() {
  const crowd = await client.models.retrieve('crowd');
  return { ids: (await all(client.models.list())).map((m) => m.id), crowd: { id: crowd.id, object: crowd.object,
    kind: crowd.kind }, unknown: await failure(() => client.models.retrieve('nope')) };
}

async function files() {
  const first = await upload([batchLine('1', 'crowd', 'good')]);
  const second = await upload([batchLine('2', 'crowd', 'bad')]);
  const listed = (await all(client.files.list())).map((f) => f.id);
  const retrieved = await client.files.retrieve(first.id);
  const content = await (await client.files.content(first.id)).text();
  const deleted = await client.files.delete(first.id);
  return { created: [first, second].map((f) => ({ id: f.id, object: f.object, purpose: f.purpose, bytes: f.bytes })),
    listed, retrieved: { id: retrieved.id, filename: retrieved.filename }, content, deleted,
    after_delete: await failure(() => client.files.retrieve(first.id)),
    listed_after_delete: (await all(client.files.list())).map((f) => f.id) };
}

async function batches() {
  const input = await upload([batchLine('a', 'crowd', 'good'), batchLine('b', 'crowd', 'bad')]);
  const created = await client.batches.create({ input_file_id: input.id, endpoint: '/v1/chat/completions',
    completion_window: '24h' });
  const done = await until(created.id, ['completed', 'failed']);
  const output = done.output_file_id ? await (await client.files.content(done.output_file_id)).text() : '';
  const slowInput = await upload(['1', '2', '3', '4'].map((id) => batchLine(id, 'slow', 'good')));
  const slow = await client.batches.create({ input_file_id: slowInput.id, endpoint: '/v1/chat/completions',
    completion_window: '24h' });
  const cancelling = await client.batches.cancel(slow.id);
  const cancelled = await until(slow.id, ['cancelled']);
  return { created: { id: created.id, status: created.status }, done: { status: done.status,
    counts: done.request_counts }, output: output.trim().split('\n').map((line) => JSON.parse(line)),
    listed: (await all(client.batches.list())).map((b) => b.id), cancel_status: cancelling.status,
    cancelled: { status: cancelled.status, counts: cancelled.request_counts },
    cancel_completed: await failure(() => client.batches.cancel(created.id)) };
}

async function errors() {
  const wrongKey = new OpenAI({ baseURL: process.env.GATEWAY_V1, apiKey: 'wrong', maxRetries: 0 });
  return { unsupported: await failure(() => client.chat.completions.create({ ...ask('good'), n: 2 })),
    quorum: await failure(() => client.chat.completions.create(ask('good', 'fragile'), { maxRetries: 3 })),
    wrong_key: await failure(() => wrongKey.models.list()) };
}

async function main() {
  const out = { sdk_version: require('openai/version').VERSION };
  for (const [name, run] of Object.entries({ chat, stream, passthrough, models, files, batches, errors })) {
    out[name] = await run();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
