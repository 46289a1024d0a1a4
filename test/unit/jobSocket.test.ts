/**
 * A foreground job's socket (`clonectl job` reaches a sync or restore run without serve
 * through it). openJobSocket returns at once and listens in the background, so a copy does not
 * wait for node:net and the socket's set-up; its close function waits for the listen to
 * settle, so no socket outlives the job, not even one closed before it was listening.
 */
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, test} from 'node:test'
import {controlRequest} from '../../src/control/ControlClient.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {createGroup} from '../../src/group/GroupAdmin.js'
import {jobSocketName, openJobSocket} from '../../src/group/JobControl.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {waitFor} from '../helpers/waitFor.js'

const dir = mkdtempSync(join(tmpdir(), 'clonectl-jobsock-'))
after(() => rmSync(dir, {recursive: true, force: true}))

const warnings: string[] = []
const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, join(dir, 'state')), warn: (m: string) => warnings.push(m)}
const socket = join(dir, 'state', 'groups', 'g', jobSocketName)

async function group(): Promise<CloneGroup> {
  if (!existsSync(join(dir, 'src.img'))) {
    mkdirSync(join(dir, 'state', 'groups'), {recursive: true, mode: 0o700})
    writeFileSync(join(dir, 'src.img'), Buffer.alloc(1024 * 1024))
    await createGroup(ctx, {name: 'g', sourcePath: join(dir, 'src.img'), extentSize: 64 * 1024})
  }
  return CloneGroup.open(ctx, 'g', {writable: false, volumes: false})
}

test('the socket answers once it listens, and closing removes it', async () => {
  const g = await group()
  const close = openJobSocket(g, () => undefined)
  await waitFor(() => existsSync(socket), 'the job socket')
  assert.deepEqual(await controlRequest(socket, {op: 'ping'}), {pid: process.pid, group: 'g'})
  await close()
  assert.equal(existsSync(socket), false)
  await g.close()
})

// A close that did not wait for the listen hung here (its server never closed): fail instead.
test('closed before it was listening: no socket is left behind', {timeout: 10_000}, async () => {
  const g = await group()
  const close = openJobSocket(g, () => undefined)
  await close()
  assert.equal(existsSync(socket), false)
  // A listen that settled after the close would have made it now.
  await new Promise((r) => setImmediate(r))
  assert.equal(existsSync(socket), false)
  await g.close()
})

test('a socket that cannot be made is warned about, and the job goes on', async () => {
  const g = await group()
  mkdirSync(join(socket, 'in-the-way'), {recursive: true})
  warnings.length = 0
  const close = openJobSocket(g, () => undefined)
  await close()
  assert.equal(warnings.length, 1)
  assert.match(warnings[0]!, /cannot listen on .*job\.sock.*`clonectl job` cannot pause, re-rate or cancel it/)
  assert.ok(statSync(socket).isDirectory(), 'what was in the way is left alone')
  await g.close()
})
