/**
 * One damaged part never takes everything down, through bin/: a clone's damaged map or
 * deleted image under a running serve, serve restarted at once after a SIGKILL, `--wait N`.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn} from 'node:child_process'
import {once} from 'node:events'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {setTimeout as sleep} from 'node:timers/promises'
import {Cli, clonectlBin, MiB, randomImage, tempDir} from '../helpers/cli.js'
import {startServe, type Served} from '../helpers/serve.js'
import {GroupServer} from '../../src/group/GroupServer.js'
import type {GroupStatus} from '../../src/group/GroupStatus.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupStore} from '../../src/store/GroupStore.js'

let dir: string
let cli: Cli
const serving: Served[] = []

before(async () => {
  dir = await tempDir('groupfail')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  for (const s of serving) await s.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

async function group(name: string, clones: string[]): Promise<{src: string; path: (c: string) => string}> {
  const src = join(dir, `${name}-src.img`)
  const path = (c: string): string => join(dir, `${name}-${c}.img`)
  await randomImage(src, 4 * MiB, name.length)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  for (const c of clones) await cli.ok(['clone', 'add', name, c, '--path', path(c), '--create'])
  return {src, path}
}

async function serve(name: string): Promise<Served> {
  const s = await startServe(cli.stateDir, name)
  serving.push(s)
  return s
}

/**
 * serve under a parent that does not reap it at once (a supervisor busy elsewhere): here a
 * shell that exec's `sleep`, so a SIGKILLed serve stays a zombie, which kill(pid, 0) still
 * finds. Resolves with serve's pid once it serves.
 */
async function serveUnderSlowParent(name: string, log: string): Promise<{pid: number; parent: ChildProcess}> {
  const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(clonectlBin)} serve ${name} --state-dir ${JSON.stringify(cli.stateDir)} >${JSON.stringify(log)} 2>&1 & echo $!; exec sleep 600`
  const parent = spawn('sh', ['-c', cmd], {stdio: ['ignore', 'pipe', 'ignore']})
  const [line] = (await once(parent.stdout!, 'data')) as [Buffer]
  const pid = Number(line.toString().trim())
  for (;;) {
    const text = await fsp.readFile(log, 'utf8').catch(() => '')
    if (/serving group/.test(text)) return {pid, parent}
    if (/Error/.test(text)) {
      parent.kill('SIGKILL')
      throw new Error(`serve ${name} failed to start:\n${text}`)
    }
    await sleep(20)
  }
}

describe('serve restarted right after a SIGKILL', () => {
  test('given serve killed with SIGKILL and not yet reaped, when it is started again at once, then it takes the lock over every time (5 of 5)', async () => {
    await group('kr', ['c1'])
    const parents: ChildProcess[] = []
    try {
      let s = await serveUnderSlowParent('kr', join(dir, 'kr-0.log'))
      parents.push(s.parent)
      for (let i = 1; i <= 5; i++) {
        process.kill(s.pid, 'SIGKILL')
        const log = join(dir, `kr-${i}.log`)
        s = await serveUnderSlowParent('kr', log)
        parents.push(s.parent)
        assert.match(await fsp.readFile(log, 'utf8'), /took over the lock of group kr/)
      }
      process.kill(s.pid, 'SIGTERM')
    } finally {
      for (const p of parents) p.kill('SIGKILL')
    }
  })
})

describe('--wait SECONDS', () => {
  test('given `--wait 70` with a space, as help shows it, then it is accepted as seconds', async () => {
    await group('wt', ['c1'])
    const r = await cli.json(['clone', 'sync', 'wt', 'c1', '--wait', '70'])
    assert.equal(r.clone ?? 'c1', 'c1')
    await cli.ok(['clone', 'sync', 'wt', 'c1', '--wait'])
    await cli.ok(['clone', 'sync', '--wait', '5', 'wt', 'c1'])
    const bad = await cli.json(['clone', 'sync', 'wt', 'c1', '--wait=soon'], 2)
    assert.match(bad.error.message, /--wait expects seconds, got "soon"/)
  })
})

describe('one clone damaged under serve', () => {
  test('given a clone image deleted while serve runs, then another clone syncs, status shows nothing running, and serve stops with no session marker left', async () => {
    const {path} = await group('vd', ['c1', 'c2'])
    const s = await serve('vd')
    await fsp.rm(path('c1'))
    const r = await cli.json(['clone', 'sync', 'vd', 'c2'])
    assert.equal(r.completed ?? true, true)
    const st = await cli.status('vd')
    assert.equal(st.operation, undefined)
    assert.equal(st.clones.find((c: {name: string}) => c.name === 'c2').state, 'synchronized')
    assert.equal(st.clones.find((c: {name: string}) => c.name === 'c1').state, 'fractured')
    const bad = await cli.json(['clone', 'sync', 'vd', 'c1'], 8)
    assert.match(bad.error.message, /clone c1 of group vd is unavailable/)
    assert.equal((await s.stop()).code, 0)
    const rec = JSON.parse(await fsp.readFile(join(cli.stateDir, 'groups', 'vd', 'group.json'), 'utf8'))
    assert.equal(rec.session, undefined)
    assert.equal(rec.operation, undefined)
    await cli.ok(['clone', 'remove', 'vd', 'c1', '--yes'])
  })

  test('given a clone map file truncated, then status, group list and serve keep working, and the printed fix rebuilds it', async () => {
    await group('md', ['c1', 'c2'])
    const map = join(cli.stateDir, 'groups', 'md', 'clone-c1.map')
    await fsp.truncate(map, 100)
    const st = await cli.status('md')
    const c1 = st.clones.find((c: {name: string}) => c.name === 'c1')
    assert.equal(c1.state, 'out-of-sync')
    assert.match(c1.stateReason, /^map damaged: map file .*clone-c1\.map: truncated/)
    await cli.ok(['group', 'list'])
    const s = await serve('md')
    assert.match(s.stderr(), /clone c1 of group md: map damaged/)
    const fix = /run `(clonectl clone sync md c1)`/.exec(c1.stateReason)
    assert.ok(fix, c1.stateReason)
    await cli.ok(fix[1]!.split(' ').slice(1))
    assert.equal((await cli.status('md')).clones.find((c: {name: string}) => c.name === 'c1').state, 'synchronized')
    await s.stop()
    await cli.ok(['verify', 'md', 'c1'])
  })

  test('given a clone map file missing, then verify --repair, clone remove and group destroy --force all work (exit 0)', async () => {
    await group('mx', ['c1', 'c2', 'c3'])
    const dirOf = join(cli.stateDir, 'groups', 'mx')
    await fsp.rm(join(dirOf, 'clone-c1.map'))
    await fsp.writeFile(join(dirOf, 'clone-c2.map'), Buffer.alloc(4096, 0xff))
    await cli.ok(['verify', 'mx', 'c1', '--repair'])
    await cli.ok(['clone', 'remove', 'mx', 'c2', '--yes'])
    await fsp.writeFile(join(dirOf, 'clone-c3.map'), 'garbage')
    await cli.ok(['group', 'destroy', 'mx', '--force', '--yes'])
    assert.deepEqual(await fsp.readdir(join(cli.stateDir, 'groups')).then((n) => n.filter((x) => x === 'mx')), [])
  })
})

describe('status from serve', () => {
  test('given a clone serve no longer mirrors but could not record so (its save failed), then status shows it fractured, not synchronized', async () => {
    await group('ss', ['c1'])
    const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, cli.stateDir)}
    const server = await GroupServer.start(ctx, 'ss', {command: 'test serve'})
    try {
      // What a mirror failure does when group.json cannot be written (EMFILE): memory only.
      server.g.member('c1').apply('fracture', {reason: 'a mirrored write failed: EMFILE'})
      const st = (await server.handle({op: 'status'}, () => undefined, new AbortController().signal)) as GroupStatus
      assert.equal(st.clones[0]!.state, 'fractured')
      assert.match(st.clones[0]!.stateReason ?? '', /EMFILE/)
    } finally {
      await server.stop()
    }
  })
})

