/**
 * The control socket checks every request before acting on it: malformed JSON, `null`, an
 * unknown op, missing or mistyped fields (a rate of "fast") are a named usage error (exit 2)
 * and reach no handler; never a stack trace marked as a bug.
 */
import assert from 'node:assert/strict'
import {mkdtemp, rm} from 'node:fs/promises'
import {connect} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {ControlServer} from '../../src/control/ControlServer.js'
import {checkControlRequest, type ControlRequest} from '../../src/control/protocol.js'

let dir: string
let server: ControlServer
const handled: ControlRequest[] = []

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clonectl-control-'))
  server = new ControlServer(async (req) => {
    handled.push(req)
    return {ok: req.op}
  })
  await server.listen(join(dir, 'control.sock'))
})
after(async () => {
  await server.close()
  await rm(dir, {recursive: true, force: true})
})

/** Send one raw line; resolve with the result message. */
function raw(line: string): Promise<{ok: boolean; value?: unknown; error?: {code: string; exitCode: number; message: string; fix?: string}}> {
  return new Promise((resolve, reject) => {
    const s = connect(join(dir, 'control.sock'))
    let buf = ''
    s.on('connect', () => s.write(`${line}\n`))
    s.on('data', (b) => (buf += b.toString('utf8')))
    s.on('error', reject)
    s.on('close', () => resolve(JSON.parse(buf.trim().split('\n').pop()!)))
  })
}

describe('control requests are checked before they are handled', () => {
  const bad: Array<[string, RegExp]> = [
    ['null', /control request null is not a JSON object/],
    ['[1]', /is not a JSON object/],
    ['{', /control request is not JSON/],
    ['{}', /control request op undefined is not one of ping, status/],
    ['{"op":"explode"}', /op "explode" is not one of/],
    ['{"op":"sync"}', /control request sync lacks its field "clone"/],
    ['{"op":"sync","clone":"c1","rate":"fast"}', /field "rate" is "fast", not a number of bytes per second/],
    ['{"op":"rate","rate":-5}', /field "rate" is -5/],
    ['{"op":"fracture","clones":"c1"}', /field "clones" is "c1", not a non-empty list of names/],
    ['{"op":"verify","clone":"c1","repair":"yes"}', /field "repair" is "yes", not true or false/],
    ['{"op":"remove","clone":"c1","force":true}', /control request remove has an unknown field "force"/],
  ]
  for (const [line, want] of bad)
    test(`given ${line}, then a usage error naming the problem, and no handler runs`, async () => {
      const before = handled.length
      const r = await raw(line)
      assert.equal(r.ok, false)
      assert.equal(r.error?.code, 'USAGE')
      assert.equal(r.error?.exitCode, 2)
      assert.match(r.error?.message ?? '', want)
      assert.doesNotMatch(r.error?.message ?? '', /\n|at .*\.js/, 'one line, no stack')
      assert.ok(r.error?.fix)
      assert.equal(handled.length, before)
    })

  test('given well-formed requests, then they reach the handler unchanged', async () => {
    for (const req of [{op: 'ping'}, {op: 'sync', clone: 'c1', full: true, rate: 1048576}, {op: 'rate'}, {op: 'restore', background: true}, {op: 'restore', clone: 'c', disconnectClients: true}] as ControlRequest[]) {
      const r = await raw(JSON.stringify(req))
      assert.deepEqual(r, {type: 'result', ok: true, value: {ok: req.op}})
      assert.deepEqual(handled.at(-1), req)
    }
    assert.deepEqual(checkControlRequest({op: 'fracture', clones: ['a', 'b']}), {op: 'fracture', clones: ['a', 'b']})
  })
})
