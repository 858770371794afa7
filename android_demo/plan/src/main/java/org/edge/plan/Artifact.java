package org.edge.plan;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;
import java.nio.charset.StandardCharsets;

/** An artifact directory as `edge export --to executorch` writes it, checked for what the app needs:
 * plan.json (routed mode), the program file(s) it names, checks.safetensors (the example input and
 * the eager outputs of every branch-forcing case) and, to start from text, tokenizer/tokenizer.json.
 *
 *   java -cp plan.jar org.edge.plan.Artifact ARTIFACT_DIR     (prints what it found, exit 1 if unusable)
 */
public final class Artifact {
    public final Path dir;
    public final Plan plan;
    public final Map<String, Tensor> checks;

    private Artifact(Path dir, Plan plan, Map<String, Tensor> checks) {
        this.dir = dir;
        this.plan = plan;
        this.checks = checks;
    }

    public static Artifact open(Path dir) throws IOException {
        Path planFile = dir.resolve("plan.json");
        if (!Files.isRegularFile(planFile)) throw new PlanException(dir + " is not an edge artifact (no plan.json); export one with `edge export --to executorch`");
        Plan plan = Plan.parse(new String(Files.readAllBytes(planFile), StandardCharsets.UTF_8));
        if (!plan.runtime.equals("executorch")) throw new PlanException(dir + " is a " + plan.runtime + " artifact; the app runs ExecuTorch artifacts (edge export --to executorch)");
        if (!plan.mode.equals("routed")) throw new PlanException(dir + " is exported in the " + plan.mode + " mode; the app runs the routed mode (edge export --mode routed)");
        for (String file : plan.methods.values())
            if (!Files.isRegularFile(dir.resolve(file))) throw new PlanException(dir.resolve(file) + " is missing; copy the whole artifact directory");
        Path checks = dir.resolve("checks.safetensors");
        if (!Files.isRegularFile(checks)) throw new PlanException(checks + " is missing; copy the whole artifact directory");
        return new Artifact(dir, plan, Safetensors.read(checks));
    }

    /** The program file (one .pte holds every method). */
    public Path program() {
        return dir.resolve(plan.methods.values().iterator().next());
    }

    /** tokenizer/tokenizer.json (for {@link Tokenizer}), or null when the artifact was exported without one. */
    public Path tokenizerJson() {
        Path v = dir.resolve("tokenizer").resolve("tokenizer.json");
        return Files.isRegularFile(v) ? v : null;
    }

    /** The example input the export traced (the inputs of every check). */
    public Map<String, Tensor> exampleInputs() {
        Map<String, Tensor> in = new LinkedHashMap<>();
        for (String name : plan.inputs) in.put(name, check("input." + name));
        return in;
    }

    public Tensor check(String name) {
        Tensor t = checks.get(name);
        if (t == null) throw new PlanException("checks.safetensors has no " + name + "; export the artifact again");
        return t;
    }

    public static void main(String[] args) {
        try {
            Artifact a = open(Paths.get(args[0]));
            System.out.println("OK " + a.plan.modelType + " " + a.plan.mode + " precision=" + a.plan.precision + " methods=" + a.plan.methods.size() + " segments=" + a.plan.segments.size()
                    + " levels=" + a.plan.levels.size() + " checks=" + a.checks.size() + " program=" + a.program().getFileName()
                    + " tokenizer=" + (a.tokenizerJson() != null) + " input_ids=" + java.util.Arrays.toString(a.exampleInputs().values().iterator().next().l));
        } catch (PlanException e) {
            System.err.println("error: " + e.getMessage());
            System.exit(1);
        } catch (IOException e) {
            System.err.println("error: cannot read the artifact (" + e.getMessage() + ")");
            System.exit(1);
        }
    }
}
