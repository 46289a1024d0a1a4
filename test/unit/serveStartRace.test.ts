/**
 * `serve` runs one copy operation at a time. Two requests that arrive together (two cron
 * jobs, an operator and a script) used to both pass the "busy" check, which looked only at
 * an operation already running, while the first was still being set up (its record being
 * saved): both then ran, and the second's record replaced the first's. Whatever arrives while
 * another operation is starting is refused as if it were running.
 */
import assert from 'node:assert/strict'
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {addClone, createGroup, fractureClones} from '../../src/group/GroupAdmin.js'
import {GroupServer} from '../../src/group/GroupServer.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {StateError} from '../../src/errors/errors.js'
import type {ControlRequest} from '../../src/control/protocol.js'

const EXTENT = 64 * 1024
const SIZE = 256 * EXTENT

async function serveWithTwoFracturedClones(dir: string): Promise<GroupServer> {
  const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, join(dir, 'state'))}
  mkdirSync(join(dir, 'state', 'groups'), {recursive: true, mode: 0o700})
  writeFileSync(join(dir, 'src.img'), Buffer.alloc(SIZE, 0x11))
  await createGroup(ctx, {name: 'g', sourcePath: join(dir, 'src.img'), extentSize: EXTENT})
  const g = await CloneGroup.open(ctx, 'g', {writable: true})
  for (const c of ['c1', 'c2']) {
    await addClone(g, {clone: c, path: join(dir, `${c}.img`), create: true})
    const sync = await ForwardSync.start(g, {clone: c, command: 'test'})
    if (sync instanceof ForwardSync) await sync.run()
  }
  await fractureClones(g, ['c1', 'c2'])
  await g.close()
  const server = await GroupServer.start(ctx, 'g', {command: 'test serve', socket: join(dir, 'nbd.sock')})
  // Every extent changes after the fracture: each clone has a whole volume to copy.
  await server.host.write(0, Buffer.alloc(SIZE, 0x22), false)
  await server.host.flush()
  return server
}

const ask = (server: GroupServer, req: ControlRequest): Promise<unknown> => server.handle(req, () => undefined, new AbortController().signal)

for (const [first, second] of [
  [{op: 'sync', clone: 'c1', background: true}, {op: 'sync', clone: 'c2', background: true}],
  [{op: 'sync', clone: 'c1', background: true}, {op: 'restore', clone: 'c2', background: true, disconnectClients: true}],
  [{op: 'restore', clone: 'c1', background: true, disconnectClients: true}, {op: 'sync', clone: 'c2', background: true}],
] as Array<[ControlRequest, ControlRequest]>) {
  test(`given two fractured clones under serve, when a ${first.op} of c1 and a ${second.op} of c2 arrive together, then one starts and the other is refused as busy`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'clonectl-startrace-'))
    const server = await serveWithTwoFracturedClones(dir)
    try {
      const results = await Promise.allSettled([ask(server, first), ask(server, second)])
      const started = results.filter((r) => r.status === 'fulfilled')
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
      assert.equal(started.length, 1, `exactly one operation starts (${results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'started')).join('; ')})`)
      assert.equal(refused.length, 1)
      assert.ok(refused[0].reason instanceof StateError, String(refused[0].reason))
      assert.match((refused[0].reason as Error).message, /already (running|starting)/)
      await server.operation?.done.catch(() => undefined)
    } finally {
      await server.stop()
      rmSync(dir, {recursive: true, force: true})
    }
  })
}

test('given group.json read by status just before a sync under serve saved its start, then status still shows the sync both live and recorded', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'clonectl-startrace-'))
  let armed: (() => Promise<void>) | undefined
  class RacingStore extends GroupStore {
    override async load(name: string): ReturnType<GroupStore['load']> {
      const record = await super.load(name)
      const hook = armed
      armed = undefined
      // The sync starts (its record saved, the job live) after this read, before status composes.
      if (hook) await hook()
      return record
    }
  }
  const ctx = {fs: nodeFs, store: new RacingStore(nodeFs, join(dir, 'state'))}
  mkdirSync(join(dir, 'state', 'groups'), {recursive: true, mode: 0o700})
  writeFileSync(join(dir, 'src.img'), Buffer.alloc(SIZE, 0x11))
  await createGroup(ctx, {name: 'g', sourcePath: join(dir, 'src.img'), extentSize: EXTENT})
  const g = await CloneGroup.open(ctx, 'g', {writable: true})
  await addClone(g, {clone: 'c1', path: join(dir, 'c1.img'), create: true})
  await g.close()
  const server = await GroupServer.start(ctx, 'g', {command: 'test serve', socket: join(dir, 'nbd.sock')})
  try {
    // Pause the sync as soon as it starts, so it is still running when status composes.
    armed = async () => {
      await ask(server, {op: 'sync', clone: 'c1', background: true})
      server.operation?.pause()
    }
    const s = (await ask(server, {op: 'status'})) as {operation?: {kind: string; clone: string}; server: {operation?: {operation: string; clone: string}}}
    assert.equal(armed, undefined, 'the sync was started between the read and the answer')
    assert.equal(s.server.operation?.clone, 'c1', 'the live job is shown')
    assert.equal(s.operation?.clone, 'c1', 'and the recorded operation with it')
    assert.equal(s.operation?.kind, 'sync')
  } finally {
    server.operation?.resume()
    await server.operation?.done.catch(() => undefined)
    await server.stop()
    rmSync(dir, {recursive: true, force: true})
  }
})
