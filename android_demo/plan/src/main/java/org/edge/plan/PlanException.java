package org.edge.plan;

/** What is wrong with a plan (or with what a method returned), in one line that says what to do. */
public class PlanException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public PlanException(String message) {
        super(message);
    }
}
