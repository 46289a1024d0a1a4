/**
 * The layering ESLint keeps (eslint.config.js; STYLE.md 1 and 11, issue 17 item 7): src/ draws
 * nothing and ships no test support; the engines and what they stand on import neither
 * commands/ nor orchestration. Each case lints a planted file through the repository's own
 * config, as `npm run lint` would see it at that path.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {ESLint} from 'eslint'
import {repoRoot} from '../helpers/cli.js'

const eslint = new ESLint({cwd: repoRoot})

/** The rule ids of the errors `code` gets at `path` (relative to the repository). */
async function problems(path: string, code: string): Promise<string[]> {
  const [r] = await eslint.lintText(code, {filePath: `${repoRoot}/${path}`})
  return r.messages.filter((m) => m.severity === 2).map((m) => `${m.ruleId ?? 'fatal'}: ${m.message}`)
}

const restricted = (ps: string[]): boolean => ps.length > 0 && ps.every((p) => p.startsWith('no-restricted-imports: '))

describe('lint: what src/ may import', () => {
  test('given a planted chalk import in src/engine, then lint reports it', async () => {
    const ps = await problems('src/engine/x.ts', "import chalk from 'chalk'\nexport const red = chalk.red\n")
    assert.ok(restricted(ps), ps.join('\n'))
    assert.match(ps[0], /src\/ never draws/)
  })

  test('given @oclif/core, ora or cli-table3 anywhere in src/ but src/ui/, then lint reports each', async () => {
    for (const [path, mod] of [['src/group/x.ts', '@oclif/core'], ['src/store/x.ts', 'ora'], ['src/nbd/x.ts', 'cli-table3'], ['src/control/x.ts', '@oclif/core']]) {
      const ps = await problems(path, `import x from '${mod}'\nexport const y = x\n`)
      assert.ok(restricted(ps), `${path} importing ${mod}: ${ps.join('\n')}`)
    }
  })

  test('given the same imports in src/ui/ and commands/, then lint accepts them (they draw)', async () => {
    assert.deepEqual(await problems('src/ui/x.ts', "import chalk from 'chalk'\nexport const red = chalk.red\n"), [])
    assert.deepEqual(await problems('commands/x.ts', "import {Command} from '@oclif/core'\nexport const C = Command\n"), [])
  })

  test('given an import of test support in src/, then lint reports it (it does not ship)', async () => {
    const ps = await problems('src/io/x.ts', "import {MemoryFs} from '../../test/support/MemoryFs.js'\nexport const fs = new MemoryFs()\n")
    assert.ok(restricted(ps), ps.join('\n'))
  })

  test('given the layers under orchestration importing commands/, GroupOperations, GroupServer or Drill, then lint reports each', async () => {
    const cases = [
      ['src/engine/x.ts', '../group/GroupServer.js'],
      ['src/engine/x.ts', '../group/GroupOperations.js'],
      ['src/map/x.ts', '../group/Drill.js'],
      ['src/nbd/x.ts', '../../commands/serve.js'],
      ['src/volume/x.ts', '../group/CloneGroup.js'],
      ['src/store/x.ts', '../group/GroupStatus.js'],
      ['src/io/x.ts', '../group/GroupServer.js'],
    ]
    for (const [path, mod] of cases) {
      const ps = await problems(path, `import {a} from '${mod}'\nexport const b = a\n`)
      assert.ok(restricted(ps), `${path} importing ${mod}: ${ps.join('\n')}`)
    }
  })

  test('given src/engine importing the group model (CloneGroup), then lint reports it: the engines see the group through their port (EngineGroup)', async () => {
    const ps = await problems('src/engine/x.ts', "import type {CloneGroup} from '../group/CloneGroup.js'\nexport type G = CloneGroup\n")
    assert.ok(restricted(ps), ps.join('\n'))
  })
})

describe('lint: the rules beyond imports', () => {
  test('given an eslint-disable no rule needs, then lint reports it', async () => {
    const ps = await problems('src/engine/x.ts', '// eslint-disable-next-line no-debugger\nexport const one = 1\n')
    assert.equal(ps.length, 1, ps.join('\n'))
    assert.match(ps[0], /Unused eslint-disable directive/)
  })

  test("given an unused import or an explicit any, then typescript-eslint's recommended rules report it", async () => {
    const ps = await problems('src/engine/x.ts', "import {join} from 'node:path'\nexport const f = (x: any): number => x\n")
    assert.deepEqual(ps.map((p) => p.split(':')[0]).sort(), ['@typescript-eslint/no-explicit-any', '@typescript-eslint/no-unused-vars'])
  })
})
