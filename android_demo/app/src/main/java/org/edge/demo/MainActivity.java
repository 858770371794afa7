package org.edge.demo;

import android.app.Activity;
import android.os.Bundle;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.EditText;
import android.widget.Spinner;
import android.widget.TextView;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.edge.plan.Artifact;
import org.edge.plan.Driver;
import org.edge.plan.Plan;
import org.edge.plan.Tensor;
import org.edge.plan.Tokenizer;

/** On-device semantic search over a few notes with the adaptive MiniLM: pick a budget level (a preset),
 * type a sentence, see the nearest notes, the latency against the budget, and what the model did
 * (exit layer, skipped layers, learners per token). "Check" re-runs every bundled branch-forcing case
 * against the eager outputs exported with the artifact. */
public final class MainActivity extends Activity {
    private static final int MAX_TOKENS = 128;
    private Artifact artifact;
    private EtMethods methods;
    private Tokenizer tokenizer;
    private float[][] noteEmbeddings;
    private TextView result;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_main);
        result = findViewById(R.id.result);
        EditText dir = findViewById(R.id.model_dir);
        Spinner level = findViewById(R.id.level);
        EditText budget = findViewById(R.id.budget_ms);
        EditText query = findViewById(R.id.query);
        ((Button) findViewById(R.id.load)).setOnClickListener(v -> guarded(() -> load(dir.getText().toString(), level)));
        ((Button) findViewById(R.id.search)).setOnClickListener(v -> guarded(() -> search(query.getText().toString(),
                (String) level.getSelectedItem(), budget.getText().toString())));
        ((Button) findViewById(R.id.verify)).setOnClickListener(v -> guarded(this::verify));
    }

    private interface Step {
        void run() throws Exception;
    }

    private void guarded(Step step) {
        try {
            step.run();
        } catch (Exception e) { // one line, what to do: the plan and artifact errors say it
            result.setText("error: " + e.getMessage());
        }
    }

    private void load(String dir, Spinner level) throws Exception {
        if (methods != null) methods.destroy();
        artifact = Artifact.open(Paths.get(dir));
        if (artifact.tokenizerJson() == null) throw new IllegalStateException(dir + " has no tokenizer/: export it with `edge export`");
        tokenizer = Tokenizer.load(artifact.tokenizerJson());
        methods = new EtMethods(artifact.program().toString());
        List<String> names = new ArrayList<>();
        for (Plan.Level l : artifact.plan.levels) names.add(l.name);
        level.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item, names));
        String[] notes = getResources().getStringArray(R.array.notes);
        noteEmbeddings = new float[notes.length][];
        Map<String, float[]> full = artifact.plan.levels.get(0).knobs;
        for (int i = 0; i < notes.length; i++) noteEmbeddings[i] = embed(notes[i], full).output.f;
        result.setText(String.format(Locale.ROOT, "loaded %s: %d layers, %d budget levels, %d notes embedded",
                artifact.plan.modelType, artifact.plan.layers, names.size(), notes.length));
    }

    private Driver.Result embed(String text, Map<String, float[]> knobs) {
        long[] ids = tokenizer.encode(text, MAX_TOKENS);
        long[] mask = new long[ids.length];
        java.util.Arrays.fill(mask, 1);
        Map<String, Tensor> inputs = new java.util.HashMap<>();
        inputs.put("input_ids", Tensor.of(ids, 1, ids.length));
        inputs.put("attention_mask", Tensor.of(mask, 1, mask.length));
        return Driver.run(artifact.plan, methods, inputs, knobs);
    }

    private void search(String text, String levelName, String budgetText) {
        if (artifact == null) throw new IllegalStateException("load an artifact first");
        Plan.Level level = artifact.plan.level(levelName);
        long t0 = System.nanoTime();
        Driver.Result r = embed(text, level.knobs);
        double ms = (System.nanoTime() - t0) / 1e6;
        String[] notes = getResources().getStringArray(R.array.notes);
        int best = 0;
        double bestCos = -2;
        for (int i = 0; i < notes.length; i++) {
            double c = cosine(r.output.f, noteEmbeddings[i]);
            if (c > bestCos) { bestCos = c; best = i; }
        }
        StringBuilder s = new StringBuilder();
        s.append(String.format(Locale.ROOT, "nearest note (cos %.3f): %s%n", bestCos, notes[best]));
        s.append(String.format(Locale.ROOT, "latency %.1f ms", ms));
        if (!budgetText.isEmpty()) {
            double budget = Double.parseDouble(budgetText);
            s.append(String.format(Locale.ROOT, " against %.1f ms: %s", budget, ms <= budget ? "PASS" : "FAIL"));
        }
        boolean moe = artifact.plan.experts > 0;
        s.append(String.format(Locale.ROOT, "%nexit after layer %d of %d; skipped layers %s; %s run %.0f %%%n",
                r.exitLayer, artifact.plan.layers, skippedLayers(r.skipped), moe ? "experts" : "learners",
                100 * (moe ? r.moeFraction(artifact.plan.experts) : r.acmFraction(artifact.plan.learners))));
        if (r.ks != null) {
            for (int a = 0; a < r.ks.length; a++) s.append(moe ? "MoE " : "ACM ").append(a + 1).append(moe ? " experts per token (bit masks): " : " learners per token: ").append(java.util.Arrays.toString(r.ks[a])).append('\n');
        }
        result.setText(s.toString());
    }

    private void verify() {
        if (artifact == null) throw new IllegalStateException("load an artifact first");
        StringBuilder s = new StringBuilder();
        org.edge.plan.Benchmark.run(artifact, methods, 1, 0, 1, new java.util.HashMap<>(), line -> {
            if (line.contains("\"kind\": \"branch\"")) s.append(line.replaceAll(".*\"case\": \"([^\"]*)\".*\"outputs_match\": (\\w+).*", "$1: $2")).append('\n');
        });
        result.setText(s.toString());
    }

    private static String skippedLayers(boolean[] skipped) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < skipped.length; i++) if (skipped[i]) b.append(b.length() > 0 ? "," : "").append(i + 1);
        return b.length() == 0 ? "none" : b.toString();
    }

    private static double cosine(float[] a, float[] b) {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
        return dot / Math.sqrt(na * nb + 1e-12);
    }

    @Override
    protected void onDestroy() {
        if (methods != null) methods.destroy();
        super.onDestroy();
    }
}
