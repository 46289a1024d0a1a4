/**
 * One damaged part never takes everything down, through bin/: a clone's damaged map or
 * deleted image under a running serve, serve restarted at once after a SIGKILL, `--wait N`.
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, MiB, randomImage, tempDir} from '../helpers/cli.js'
import {startServe, type Served} from '../helpers/serve.js'

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

describe('serve restarted right after a SIGKILL', () => {
  test('given serve killed with SIGKILL, when it is started again at once, then it takes the lock over every time (5 of 5)', async () => {
    await group('kr', ['c1'])
    let s = await serve('kr')
    for (let i = 0; i < 5; i++) {
      s.proc.kill('SIGKILL')
      // No wait for the exit: the killed process may not even be reaped yet.
      s = await serve('kr')
      assert.match(s.stderr(), /took over the lock of group kr/)
    }
    await s.stop()
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
